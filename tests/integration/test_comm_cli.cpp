// `moe comm-bench` as a program: it starts its own ranks, uses the transport it is told to,
// checks every result (#wrong) and refuses unknown transports.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "run_binary.h"

namespace moe {
namespace {

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

TEST(CommBenchCli, UnknownTransportIsRefused) {
  const auto r = run_moe("comm-bench --nproc 2 --transport carrier-pigeon");
  EXPECT_NE(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("carrier-pigeon"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("tcp"), std::string::npos) << r.second;  // says what is allowed
}

}  // namespace
}  // namespace moe
