// What switching between small and big collectives costs: a training step mixes them (a few
// KiB of loss or router statistics, then MiBs of gradients or expert tokens). Over TCP a wait
// for a small message runs the sockets itself and a wait for a big one leaves them to the
// progress thread (src/comm/README.md), so the hand-over between the two is on this path.
//
// Per round it times, on the same communicator: ITERS small all_reduces alone, ITERS big
// all_to_alls alone, then ITERS pairs of one of each, and prints the medians over the rounds
// (microseconds per call or pair, slowest rank) and the ratio pair / (small + big): 1.00 means
// switching costs nothing.
//
// usage: moe launch --nproc-per-node N -- comm_mixed [--small 1K] [--big 4M] [--iters 200]
//          [--rounds 5]        (MOE_COMM_TRANSPORT=tcp for the TCP path)
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/bench.h"
#include "comm/communicator.h"

using namespace moe::comm;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    uint64_t small_bytes = 1 << 10, big_bytes = 4 << 20;
    int iters = 200, rounds = 5;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      MOE_CHECK(i + 1 < argc, "comm_mixed", a, " needs a value");
      const std::string v = argv[++i];
      if (a == "--small")
        small_bytes = parse_bytes(v);
      else if (a == "--big")
        big_bytes = parse_bytes(v);
      else if (a == "--iters")
        iters = std::stoi(v);
      else if (a == "--rounds")
        rounds = std::stoi(v);
      else
        MOE_FAIL("comm_mixed", "unknown argument '", a, "': --small --big --iters --rounds");
    }
    MOE_CHECK(iters >= 1 && rounds >= 1, "comm_mixed", "--iters and --rounds must be >= 1");
    auto c = Communicator::from_env();
    const int n = c->size();
    std::vector<float> small(std::max<uint64_t>(1, small_bytes / 4), 1.0f);
    const size_t block = std::max<uint64_t>(1, big_bytes / 4 / n);
    std::vector<float> in(block * n, 1.0f), out(block * n);
    auto run_small = [&] {
      c->all_reduce(small.data(), small.data(), small.size(), moe::Dtype::kF32, ReduceOp::kSum);
    };
    auto run_big = [&] { c->all_to_all(in.data(), out.data(), block, moe::Dtype::kF32); };
    // Microseconds per call of `f`, slowest rank.
    auto time_us = [&](auto&& f) {
      c->barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < iters; ++i) f();
      double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / iters;
      c->all_reduce(&us, &us, 1, moe::Dtype::kF64, ReduceOp::kMax);
      return us;
    };
    for (int i = 0; i < 10; ++i) run_small(), run_big();  // warm-up: buffers, stash, sockets
    std::vector<double> s_us, b_us, p_us, ratio;
    for (int r = 0; r < rounds; ++r) {
      s_us.push_back(time_us(run_small));
      b_us.push_back(time_us(run_big));
      p_us.push_back(time_us([&] { run_small(), run_big(); }));
      ratio.push_back(p_us.back() / (s_us.back() + b_us.back()));
    }
    if (c->rank() == 0) {
      std::printf(
          "# comm_mixed: %d ranks, %s; all_reduce of %llu B and all_to_all of %llu B, "
          "%d calls per timing, medians of %d rounds\n",
          n, c->transport_info().c_str(), (unsigned long long)(small.size() * 4),
          (unsigned long long)(block * n * 4), iters, rounds);
      std::printf("%12s %12s %12s %22s\n", "small(us)", "big(us)", "pair(us)", "pair/(small+big)");
      std::printf("%12.1f %12.1f %12.1f %22.2f\n", median(s_us), median(b_us), median(p_us),
                  median(ratio));
    }
    return 0;
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "comm_mixed: %s\n", e.what());
    return 1;
  }
}
