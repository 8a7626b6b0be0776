// The comm-bench loop behind `moe comm-bench`: nccl-tests' columns and definitions.
//   size   bytes of the whole buffer (all_gather: the gathered output; reduce_scatter: the
//          input; all_to_all: what one rank sends in all)
//   time   mean microseconds per call over the timed iterations, the slowest rank's
//   algbw  size / time;  busbw = algbw * 2(n-1)/n for all_reduce, (n-1)/n for all_gather,
//          reduce_scatter and all_to_all, 1 for broadcast (DESIGN.md section 5)
//   #wrong elements that differ from the closed-form result of one checked call, all ranks
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "comm/communicator.h"

namespace moe::comm {

struct BenchOptions {
  std::string op = "all_reduce";  // all_reduce all_gather reduce_scatter all_to_all broadcast
  uint64_t min_bytes = 1024;      // 1K
  uint64_t max_bytes = 64 << 20;  // 64M
  double factor = 2;              // size step
  Dtype dtype = Dtype::kF32;
  ReduceOp redop = ReduceOp::kSum;
  std::string algo;      // "", "ring", "rd", "rhd", "hier", "direct" (all_reduce)
  std::string algo_a2a;  // "", "pairwise", "two_level" (all_to_all)
  int warmup = 3;
  int iters = 20;
  bool check = true;
  // In and out buffers from Communicator::alloc, which peers on this host map (nccl-tests'
  // -R 1, registered user buffers) instead of plain heap memory.
  bool registered = false;
};

struct BenchRow {
  uint64_t bytes = 0, count = 0;
  double time_us = 0, algbw = 0, busbw = 0;
  int64_t wrong = 0;
};

// Collective: every rank of `c` calls it; rows are reported (identical) on every rank.
void run_bench(Communicator& c, const BenchOptions& opt,
               const std::function<void(const BenchRow&)>& on_row);
std::string bench_header(const BenchOptions& opt, int world);
std::string bench_row_text(const BenchOptions& opt, const BenchRow& row);
// "1K" "256M" "4G" "1000" -> bytes (binary multiples).
uint64_t parse_bytes(const std::string& s);

}  // namespace moe::comm
