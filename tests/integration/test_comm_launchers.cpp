// The comm library without our launcher: `mpirun -np 4 moe comm-bench ...` and `srun -n 4 moe
// comm-bench ...` must find rank, world size and store from Open MPI's OMPI_COMM_WORLD_* or
// Slurm's SLURM_* variables alone (src/comm/env.cpp), form one 4-rank world and get every
// collective right. Neither is a dependency of the project (Open MPI comes with
// `scripts/setup.sh bench`; Slurm needs a running slurmctld and slurmd, which
// `scripts/slurm_local.sh` sets up on one machine), so where one is
// missing its tests are skipped with the reason, not failed.
#include <gtest/gtest.h>
#include <sstream>
#include <string>
#include <vector>

#include "launchers.h"
#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::count;
using moe::testing::mpirun_moe;
using moe::testing::run_command;
using moe::testing::srun_moe;
using moe::testing::why_no_openmpi;
using moe::testing::why_no_slurm;

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
