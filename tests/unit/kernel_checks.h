// What the fast-kernel tests (test_kernels.cpp, test_kernels_attention.cpp) share: seeded
// normal data and the fast-against-reference comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace moe::cpu::testing {

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// max |a - b| / max(max |b|, tiny); the message names the worst element.
inline ::testing::AssertionResult close(const std::vector<float>& a, const std::vector<float>& b,
                                        double tol, const std::string& what) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": size mismatch";
  double max_diff = 0, max_mag = 1e-30;
  size_t worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= max_diff)) max_diff = d, worst = i;  // NaN counts as the worst
    max_mag = std::max(max_mag, std::fabs(double(b[i])));
  }
  const double rel = max_diff / max_mag;
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": max |diff| " << max_diff << " at [" << worst << "] (fast " << a[worst]
         << ", ref " << b[worst] << "), relative to max |ref| " << max_mag << " = " << rel
         << " > tol " << tol;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace moe::cpu::testing
