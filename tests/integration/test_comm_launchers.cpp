// The comm library without our launcher: `mpirun -np 4 moe comm-bench ...` and `srun -n 4 moe
// comm-bench ...` must find rank, world size and store from Open MPI's OMPI_COMM_WORLD_* or
// Slurm's SLURM_* variables alone (src/comm/env.cpp), form one 4-rank world and get every
// collective right. Neither is a dependency of the project (Open MPI comes with
// `scripts/setup.sh bench`; Slurm needs a running slurmctld and slurmd, which
// `scripts/slurm_local.sh` sets up on one machine), so where one is
// missing its tests are skipped with the reason, not failed.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::run_command;

// A port nobody listens on now (bound to 0 and released), for the store of one test run.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// "" when Open MPI's mpirun is usable here, else why not (the skip message).
std::string why_no_openmpi() {
  const auto [code, out] = run_command("mpirun --version");
  if (code != 0)
    return "mpirun not found (Open MPI comes with `bash scripts/setup.sh bench`): " + out;
  if (out.find("Open MPI") == std::string::npos)
    return "mpirun is not Open MPI (only OMPI_COMM_WORLD_* is read): " + out;
  return "";
}

// `mpirun -np N moe ARGS` on this host. As root Open MPI wants both the flag and the two
// variables. The launcher's and torchrun's variables are removed so that only Open MPI's can
// be found; no MOE_JOB_TOKEN, so the token is derived from the job id as for a plain user.
// MOE_MASTER_PORT: a free port, since the default 29400 may be held by another job.
std::pair<int, std::string> mpirun_moe(int np, const std::string& args) {
  return run_command(
      "env -u MOE_RANK -u MOE_WORLD_SIZE -u MOE_JOB_TOKEN -u MOE_MASTER_ADDR -u RANK "
      "-u WORLD_SIZE -u SLURM_PROCID OMPI_ALLOW_RUN_AS_ROOT=1 "
      "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MOE_MASTER_PORT=" +
      std::to_string(free_port()) +
      " MOE_COMM_CONNECT_TIMEOUT=30 MOE_COMM_TIMEOUT=60 "
      "timeout 150 mpirun --allow-run-as-root --oversubscribe --bind-to none --timeout 120 -np " +
      std::to_string(np) + " " + MOE_BINARY + " " + args);
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// comm-bench's data rows: 8 columns, the first a size; returns each row's #wrong.
std::vector<long long> wrong_per_row(const std::string& out) {
  std::vector<long long> wrong;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> cols;
    for (std::string tok; f >> tok;) cols.push_back(tok);
    if (cols.size() != 8 || cols[0].find_first_not_of("0123456789") != std::string::npos) continue;
    wrong.push_back(std::stoll(cols[7]));
  }
  return wrong;
}

// "" when srun can start a job step here (a controller and a node answer), else why not.
std::string why_no_slurm() {
  const auto [code, out] = run_command("timeout 30 srun -n 1 --time=1 true");
  if (code != 0)
    return "no usable Slurm here (`srun -n 1 true` exited " + std::to_string(code) + "): " + out;
  return "";
}

// `srun -n N -O moe ARGS` (-O: more tasks than the node has CPUs). As under mpirun, the other
// launchers' variables are removed and no token is set; the store port is the one derived
// from the job and step id.
std::pair<int, std::string> srun_moe(int np, const std::string& args) {
  return run_command(
      "env -u MOE_RANK -u MOE_WORLD_SIZE -u MOE_JOB_TOKEN -u MOE_MASTER_ADDR -u MOE_MASTER_PORT "
      "-u RANK -u WORLD_SIZE -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE "
      "MOE_COMM_CONNECT_TIMEOUT=30 MOE_COMM_TIMEOUT=60 timeout 150 srun -O --time=3 -n " +
      std::to_string(np) + " " + MOE_BINARY + " " + args);
}

// What both launchers must show for `comm-bench --op OP` on 4 ranks of this host.
void expect_one_world_of_four(const std::string& op, int code, const std::string& out) {
  ASSERT_EQ(code, 0) << out;
  // One world of 4: exactly one rank 0 printed the header (four worlds of one, or comm-bench
  // starting its own ranks, would print it several times or with another count) ...
  EXPECT_EQ(count(out, "# moe comm-bench: " + op + ", 4 ranks,"), 1) << out;
  EXPECT_EQ(count(out, "# moe comm-bench:"), 1) << out;
  // ... which reaches 3 peers (all on this host: shared memory) ...
  EXPECT_EQ(count(out, "# transport: shm to 3 ranks, tcp to 0 ranks"), 1) << out;
  // ... and found no launcher's token: it was derived from the launcher's job id.
  EXPECT_EQ(count(out, "no MOE_JOB_TOKEN"), 1) << out;
  // 1K 4K 16K 64K 256K 1M, each checked on all 4 ranks (#wrong is summed over ranks).
  const std::vector<long long> wrong = wrong_per_row(out);
  ASSERT_EQ(wrong.size(), 6u) << out;
  for (size_t i = 0; i < wrong.size(); ++i) EXPECT_EQ(wrong[i], 0) << "row " << i << "\n" << out;
}

const char* kBenchArgs = " --min-bytes 1K --max-bytes 1M --factor 4 --iters 2 --warmup 1";

class CommUnderMpirun : public ::testing::TestWithParam<std::string> {};

TEST_P(CommUnderMpirun, FourRanksFormOneWorldAndEverySizeIsRight) {
  if (const std::string why = why_no_openmpi(); !why.empty()) GTEST_SKIP() << why;
  const auto [code, out] = mpirun_moe(4, "comm-bench --op " + GetParam() + kBenchArgs);
  expect_one_world_of_four(GetParam(), code, out);
}

INSTANTIATE_TEST_SUITE_P(Op, CommUnderMpirun, ::testing::Values("all_reduce", "all_to_all"));

class CommUnderSrun : public ::testing::TestWithParam<std::string> {};

TEST_P(CommUnderSrun, FourRanksFormOneWorldAndEverySizeIsRight) {
  if (const std::string why = why_no_slurm(); !why.empty()) GTEST_SKIP() << why;
  const auto [code, out] = srun_moe(4, "comm-bench --op " + GetParam() + kBenchArgs);
  expect_one_world_of_four(GetParam(), code, out);
}

INSTANTIATE_TEST_SUITE_P(Op, CommUnderSrun, ::testing::Values("all_reduce", "all_to_all"));

}  // namespace
}  // namespace moe
