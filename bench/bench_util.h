// Small helpers shared by the benchmarks: a monotonic clock, medians, deterministic operands.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace moe::bench {

// Seconds on a monotonic clock.
inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// n values in [-0.5, 0.5) from a linear congruential generator seeded with `seed`.
inline std::vector<float> filled(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t x = seed;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    e = float(x >> 8) * 0x1p-24f - 0.5f;
  }
  return v;
}

}  // namespace moe::bench
