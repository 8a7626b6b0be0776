// `moe launch --max-restarts N` as a program (torchrun's meaning): a job whose rank fails, by an
// exit code or a signal, is started again as a whole, up to N times, each rank of attempt k
// seeing MOE_RESTART_COUNT=k and a fresh rendezvous; the exit code is the last attempt's; a job
// the user stops is not restarted; several nodes refuse restarts.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "launchers.h"
#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::count;
using moe::testing::free_port;
using moe::testing::run_command;
using moe::testing::run_moe;

// `moe launch --nproc-per-node 2 FLAGS -- sh -c 'SCRIPT'` (SCRIPT without single quotes).
std::pair<int, std::string> launch2(const std::string& flags, const std::string& script) {
  return run_moe("launch --nproc-per-node 2 " + flags + " -- sh -c '" + script + "'");
}

// Rank 1 fails (exit 3) on the first attempt only.
const std::string kFailsOnce =
    "echo \"rank $MOE_RANK attempt $MOE_RESTART_COUNT\"; "
    "if [ $MOE_RANK = 1 ] && [ $MOE_RESTART_COUNT = 0 ]; then exit 3; fi";

TEST(LaunchRestart, FailedJobIsStartedAgainWithTheNextRestartCount) {
  const auto r = launch2("--max-restarts 1", kFailsOnce);
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("moe launch: rank 1 exited with code 3; restarting the job (restart 1 "
                          "of 1)"),
            std::string::npos)
      << r.second;
  EXPECT_EQ(count(r.second, "restarting the job"), 1) << r.second;
  // Both ranks ran again, and knew it.
  EXPECT_NE(r.second.find("[0] rank 0 attempt 1"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("[1] rank 1 attempt 1"), std::string::npos) << r.second;
  EXPECT_EQ(count(r.second, "attempt 2"), 0) << r.second;
}

TEST(LaunchRestart, WithoutRestartsTheFailingCodeIsReturned) {
  for (const std::string flags : {"--max-restarts 0", ""}) {
    const auto r = launch2(flags, kFailsOnce);
    EXPECT_EQ(r.first, 3) << flags << "\n" << r.second;
    EXPECT_EQ(count(r.second, "restarting"), 0) << flags << "\n" << r.second;
    EXPECT_EQ(count(r.second, "attempt 1"), 0) << flags << "\n" << r.second;
  }
}

// The first attempt is 0 even when the launcher itself inherited a count (a nested launch).
TEST(LaunchRestart, FirstAttemptSeesRestartCountZero) {
  const auto r = run_command("MOE_RESTART_COUNT=7 " + std::string(MOE_BINARY) +
                             " launch --nproc-per-node 2 -- sh -c 'echo count=$MOE_RESTART_COUNT'");
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("[0] count=0"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("[1] count=0"), std::string::npos) << r.second;
  EXPECT_EQ(count(r.second, "count=7"), 0) << r.second;
}

TEST(LaunchRestart, RankThatAlwaysFailsIsRestartedMaxRestartsTimes) {
  const auto r = launch2("--max-restarts 2",
                         "if [ $MOE_RANK = 1 ]; then echo \"attempt $MOE_RESTART_COUNT\"; exit 5; "
                         "fi; exec sleep 30");
  EXPECT_EQ(r.first, 5) << r.second;
  EXPECT_EQ(count(r.second, "restarting the job"), 2) << r.second;
  EXPECT_NE(r.second.find("(restart 1 of 2)"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("(restart 2 of 2)"), std::string::npos) << r.second;
  for (const char* a : {"[1] attempt 0", "[1] attempt 1", "[1] attempt 2"})
    EXPECT_EQ(count(r.second, a), 1) << a << "\n" << r.second;
  EXPECT_EQ(count(r.second, "attempt 3"), 0) << r.second;
}

TEST(LaunchRestart, RankKilledBySignalIsRestarted) {
  const auto r = launch2("--max-restarts 1",
                         "if [ $MOE_RANK = 1 ] && [ $MOE_RESTART_COUNT = 0 ]; then kill -9 $$; fi; "
                         "echo \"done $MOE_RANK $MOE_RESTART_COUNT\"");
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("moe launch: rank 1 exited with code 137 (killed by signal 9, Killed); "
                          "restarting the job (restart 1 of 1)"),
            std::string::npos)
      << r.second;
  EXPECT_NE(r.second.find("[1] done 1 1"), std::string::npos) << r.second;
  EXPECT_EQ(count(r.second, "[1] done 1 0"), 0) << r.second;
}

// Real ranks: on attempt 0 rank 0 is waiting in the rendezvous when rank 1 fails; attempt 1
// meets in a new store on the same --master-port and runs a collective (the store of attempt 0
// must be gone for the port to be free, and a fresh token is used).
TEST(LaunchRestart, RestartedRanksMeetInAFreshRendezvous) {
  const int port = free_port();
  ASSERT_GT(port, 0);
  const auto r =
      launch2("--max-restarts 1 --master-port " + std::to_string(port),
              "echo \"token $MOE_JOB_TOKEN\"; "
              "if [ $MOE_RANK = 1 ] && [ $MOE_RESTART_COUNT = 0 ]; then sleep 0.3; exit 3; fi; "
              "MOE_COMM_CONNECT_TIMEOUT=20 exec " MOE_BINARY
              " comm-bench --op all_reduce --min-bytes 1K --max-bytes 1K --iters 2 --warmup 1");
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_EQ(count(r.second, "restarting the job (restart 1 of 1)"), 1) << r.second;
  EXPECT_EQ(count(r.second, "[0] # transport: "), 1) << r.second;  // attempt 1 only
  // Rank 0's token on each attempt.
  std::string tokens[2];
  int seen = 0;
  for (size_t at = r.second.find("[0] token "); at != std::string::npos && seen < 2;
       at = r.second.find("[0] token ", at + 1)) {
    const size_t b = at + 10;
    tokens[seen++] = r.second.substr(b, r.second.find('\n', b) - b);
  }
  ASSERT_EQ(seen, 2) << r.second;
  EXPECT_FALSE(tokens[0].empty()) << r.second;
  EXPECT_NE(tokens[0], tokens[1]) << r.second;
}

// Runs a bash script with $MOE (the binary) and $OUT (a file in a fresh folder) set.
std::pair<int, std::string> run_script(const std::string& script) {
  char dir[] = "/tmp/moe-restart-test-XXXXXX";
  if (!mkdtemp(dir)) return {-1, "mkdtemp failed"};
  const std::string path = std::string(dir) + "/run.sh";
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return {-1, "cannot write " + path};
  std::fputs(script.c_str(), f);
  std::fclose(f);
  const auto r = run_command("MOE=" MOE_BINARY " OUT=" + std::string(dir) + "/out bash " + path);
  run_command("rm -rf " + std::string(dir));
  return r;
}

// SIGTERM to the launcher stops the job for good: 128 + 15, and no restart.
TEST(LaunchRestart, JobStoppedByTheUserIsNotRestarted) {
  const auto r = run_script(R"SH(
$MOE launch --nproc-per-node 2 --max-restarts 3 -- sh -c 'echo "up $MOE_RESTART_COUNT"; exec sleep 30' > $OUT 2>&1 &
L=$!
for i in $(seq 200); do [ $(grep -c "] up 0" $OUT) = 2 ] && break; sleep 0.02; done
kill -TERM $L
wait $L
echo "rc=$?"
cat $OUT
)SH");
  ASSERT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("rc=143"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("moe launch: Terminated; stopping the ranks"), std::string::npos)
      << r.second;
  EXPECT_EQ(count(r.second, "restarting"), 0) << r.second;
  EXPECT_EQ(count(r.second, "up 1"), 0) << r.second;
}

// Rank 1 fails, rank 0 ignores the launcher's SIGTERM (so it is killed after the 3 s grace),
// and the user stops the launcher during that grace: the failure is not restarted, and its
// code is returned.
TEST(LaunchRestart, StopDuringAFailedAttemptIsNotRestarted) {
  const auto r = run_script(R"SH(
export READY=$OUT.ready  # rank 1 fails once rank 0 ignores SIGTERM
$MOE launch --nproc-per-node 2 --max-restarts 3 -- sh -c 'echo "up $MOE_RESTART_COUNT"; if [ $MOE_RANK = 1 ]; then while [ ! -e $READY ]; do sleep 0.02; done; exit 4; fi; trap "" TERM; touch $READY; exec sleep 30' > $OUT 2>&1 &
L=$!
for i in $(seq 200); do grep -q "stopping the others" $OUT && break; sleep 0.02; done
kill -TERM $L
wait $L
echo "rc=$?"
cat $OUT
)SH");
  ASSERT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("rank 1 exited with code 4; stopping the others"), std::string::npos)
      << r.second;
  EXPECT_NE(r.second.find("rc=4"), std::string::npos) << r.second;
  EXPECT_EQ(count(r.second, "restarting"), 0) << r.second;
  EXPECT_EQ(count(r.second, "up 1"), 0) << r.second;
}

TEST(LaunchRestart, SeveralNodesRefuseRestarts) {
  const auto r = run_command("MOE_JOB_TOKEN=abc " + std::string(MOE_BINARY) +
                             " launch --nnodes 2 --node-rank 0 --master-port 29399 "
                             "--nproc-per-node 1 --max-restarts 1 -- echo started");
  EXPECT_NE(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("--max-restarts 0 under a scheduler"), std::string::npos) << r.second;
  EXPECT_EQ(count(r.second, "started"), 0) << r.second;
}

}  // namespace
}  // namespace moe
