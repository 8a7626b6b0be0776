// `moe comm-bench` as a program: it starts its own ranks, uses the transport it is told to,
// checks every result (#wrong), maps registered buffers, and refuses unknown transports. And
// `moe launch` as a program: its ranks do not outlive it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::run_command;
using moe::testing::run_moe;

// The #wrong column of every data row (lines that do not start with '#').
int64_t total_wrong(const std::string& out, int* rows) {
  std::istringstream in(out);
  std::string line;
  int64_t wrong = 0;
  *rows = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    std::istringstream f(line);
    std::string tok, last;
    while (f >> tok) last = tok;
    wrong += std::stoll(last);
    ++*rows;
  }
  return wrong;
}

TEST(CommBenchCli, TransportFlagChoosesTheTransport) {
  for (const std::string tr : {"tcp", "shm"}) {
    const auto r = run_moe("comm-bench --nproc 2 --transport " + tr +
                           " --op all_reduce --min-bytes 1K --max-bytes 64K --factor 8"
                           " --iters 2 --warmup 1");
    ASSERT_EQ(r.first, 0) << r.second;
    // Two ranks on one host: the one peer is reached over the chosen transport.
    EXPECT_NE(r.second.find("# transport: "), std::string::npos) << r.second;
    EXPECT_NE(r.second.find(tr + " to 1 ranks"), std::string::npos) << r.second;
    int rows = 0;
    EXPECT_EQ(total_wrong(r.second, &rows), 0) << r.second;
    EXPECT_EQ(rows, 3) << r.second;  // 1K, 8K, 64K
  }
}

// --registered: in and out buffers from Communicator::alloc; rank 0 copies and reduces from
// rank 1's mapped buffers (the counts comm-bench prints), and every result is right.
TEST(CommBenchCli, RegisteredBuffersAreReadThroughTheirMappings) {
  const auto r = run_moe(
      "comm-bench --nproc 2 --transport shm --registered --op all_reduce --min-bytes 1M "
      "--max-bytes 4M --factor 4 --iters 3 --warmup 1");
  ASSERT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("registered (Communicator::alloc) buffers"), std::string::npos)
      << r.second;
  int rows = 0;
  EXPECT_EQ(total_wrong(r.second, &rows), 0) << r.second;
  EXPECT_EQ(rows, 2) << r.second;
  if (r.second.find("(shm: single copy") == std::string::npos)
    GTEST_SKIP() << "no single copy between ranks on this host:\n" << r.second;
  if (r.second.find("cannot map rank") != std::string::npos)
    GTEST_SKIP() << "this host refuses pidfd_getfd between ranks:\n" << r.second;
  const auto at = r.second.find("# rank 0 shm single copy: ");
  ASSERT_NE(at, std::string::npos) << r.second;
  unsigned long long cma = 1, copied = 0, reduced = 0;
  ASSERT_EQ(std::sscanf(r.second.c_str() + at,
                        "# rank 0 shm single copy: %llu by process_vm_readv, %llu copied from "
                        "mapped buffers, %llu reduced from mapped buffers",
                        &cma, &copied, &reduced),
            3)
      << r.second;
  EXPECT_EQ(cma, 0u) << r.second;  // every big message came from a mapped buffer
  EXPECT_GT(copied, 0u) << r.second;
  EXPECT_GT(reduced, 0u) << r.second;
}

// Ranks the launcher started are gone soon after it: killed with -9 (the kernel's
// parent-death signal), or when the reader of its output goes away (`| head -1`: SIGPIPE, and
// the launcher stops them; these ranks ignore SIGPIPE, so their own writes would not end them).
// Each rank writes its pid to a file; afterwards none may still run (zombies, waiting for a
// reaper, do not count).
TEST(LaunchCli, RanksDoNotOutliveTheLauncher) {
  const std::string script =
      R"SH(
d=$(mktemp -d)
rank='echo $$ > '$d'/pid.$MOE_RANK; '
alive() {
  n=0
  for f in $d/pid.*; do
    p=$(cat $f)
    s=$(awk '{print $3}' /proc/$p/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ] && n=$((n + 1))
  done
  echo $n
}
wait_pids() {
  for i in $(seq 200); do [ -s $d/pid.0 ] && [ -s $d/pid.1 ] && return; sleep 0.05; done
}
reap() {  # whatever is left (a failing run) must not outlive the test
  for f in $d/pid.*; do kill -9 $(cat $f) 2>/dev/null; done
}
settle() {  # up to 5 s for the ranks to go
  for i in $(seq 100); do [ "$(alive)" = 0 ] && break; sleep 0.05; done
}
)SH" + std::string(MOE_BINARY) +
      R"SH( launch --nproc-per-node 2 -- sh -c "${rank}exec sleep 600" >/dev/null 2>&1 &
L=$!
wait_pids
echo "kill9: started $(alive)"
kill -9 $L
settle
echo "kill9: alive $(alive)"
reap
rm -f $d/pid.*
)SH" + std::string(MOE_BINARY) +
      R"SH( launch --nproc-per-node 2 -- sh -c "${rank}trap '' PIPE; while :; do echo tick; sleep 0.02; done" 2>$d/err | head -1 >/dev/null
wait_pids
settle
echo "sigpipe: alive $(alive)"
echo "sigpipe: launcher said: $(grep 'moe launch' $d/err)"
reap
rm -rf $d
)SH";
  char path[] = "/tmp/moe-launch-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, script.data(), script.size()), ssize_t(script.size()));
  close(fd);
  const auto r = run_command(std::string("bash ") + path);
  unlink(path);
  ASSERT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("kill9: started 2"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("kill9: alive 0"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("sigpipe: alive 0"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("sigpipe: launcher said: moe launch: Broken pipe; stopping the ranks"),
            std::string::npos)
      << r.second;
}

TEST(CommBenchCli, UnknownTransportIsRefused) {
  const auto r = run_moe("comm-bench --nproc 2 --transport carrier-pigeon");
  EXPECT_NE(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("carrier-pigeon"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("tcp"), std::string::npos) << r.second;  // says what is allowed
}

}  // namespace
}  // namespace moe
