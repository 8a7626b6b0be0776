// Numbers for people: "3.78M" parameters, "1.07 MiB", three significant digits. Header-only so
// that moe_comm, which links nothing of src/core, can use it too.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace moe {

namespace detail {
// `v` scaled by `base` until below it, printed with three significant digits (whole numbers
// below the first step), then `sep` and the unit.
inline std::string scaled(double v, double base, const char* const* units, int nunits,
                          const char* sep) {
  int u = 0;
  while (std::fabs(v) >= base && u < nunits - 1) v /= base, ++u;
  const double a = std::fabs(v);
  const char* f = u == 0 ? "%.0f%s%s" : a < 10 ? "%.2f%s%s" : a < 100 ? "%.1f%s%s" : "%.0f%s%s";
  char s[48];
  std::snprintf(s, sizeof s, f, v, sep, units[u]);
  return s;
}
}  // namespace detail

// 999, 1.23K, 45.6M, 789B (billions), 1.00T
inline std::string human_count(double n) {
  static const char* const units[] = {"", "K", "M", "B", "T"};
  return detail::scaled(n, 1000, units, 5, "");
}

// 512 B, 1.50 KiB, 64.0 MiB, 2.54 GiB (binary units)
inline std::string human_bytes(double b) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  return detail::scaled(b, 1024, units, 6, " ");
}

// 281 GFLOP, 1.25 TFLOP
inline std::string human_flops(double f) {
  static const char* const units[] = {"FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"};
  return detail::scaled(f, 1000, units, 6, " ");
}

}  // namespace moe
