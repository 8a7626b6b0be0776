// What the Open MPI and Gloo comparison programs (mpi_bench.cpp, gloo_bench.cpp) share with
// `moe comm-bench`, so the three are measured and printed the same way (src/comm/bench.h):
//   size   bytes of the whole buffer (all_to_all: what one rank sends in all)
//   time   mean microseconds per call over the timed iterations, the slowest rank's
//   algbw  size / time;  busbw = algbw * 2(n-1)/n for all_reduce, (n-1)/n for all_to_all
//   #wrong elements that differ from the closed-form result of one checked call, all ranks
// The data are f32; all_reduce sums. This header needs nothing but the standard library.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace moe_cbench {

// "4M" "64M" "1K" "1000" -> bytes (binary multiples), as moe comm-bench reads them.
inline uint64_t parse_bytes(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  std::string unit(end ? end : "");
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  double mul = 1;
  if (unit == "K" || unit == "KB" || unit == "KIB") mul = 1024;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else if (!(unit.empty() || unit == "B") || end == s.c_str() || v < 0) {
    std::fprintf(stderr, "size '%s' is not a number like 4M or 64M\n", s.c_str());
    std::exit(2);
  }
  return static_cast<uint64_t>(v * mul);
}

// "4M,64M" -> {4194304, 67108864}
inline std::vector<uint64_t> parse_sizes(const std::string& list) {
  std::vector<uint64_t> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = list.find(',', pos);
    const std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos
                                                                          : comma - pos);
    if (!item.empty()) out.push_back(parse_bytes(item));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

struct Args {
  std::string op = "all_reduce";  // all_reduce | all_to_all
  std::string algo;               // gloo: ring | ring_chunked (all_reduce)
  std::string sizes = "4M,64M";
  std::string store;              // gloo: a fresh directory for its FileStore rendezvous
  int iters = 10, warmup = 3;
};

inline Args parse_args(int argc, char** argv, const char* usage) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n%s", k.c_str(), usage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--op") a.op = val();
    else if (k == "--algo") a.algo = val();
    else if (k == "--sizes") a.sizes = val();
    else if (k == "--store") a.store = val();
    else if (k == "--iters") a.iters = std::atoi(val().c_str());
    else if (k == "--warmup") a.warmup = std::atoi(val().c_str());
    else {
      std::fprintf(stderr, "unknown argument '%s'\n%s", k.c_str(), usage);
      std::exit(2);
    }
  }
  if ((a.op != "all_reduce" && a.op != "all_to_all") || a.iters < 1 || a.warmup < 0) {
    std::fprintf(stderr, "%s", usage);
    std::exit(2);
  }
  return a;
}

// Elements in the buffer of `bytes`: whole floats, and whole per-rank blocks for all_to_all.
inline size_t element_count(uint64_t bytes, const std::string& op, int n) {
  const uint64_t unit = op == "all_to_all" ? sizeof(float) * uint64_t(n) : sizeof(float);
  return size_t(std::max<uint64_t>(unit, bytes / unit * unit) / sizeof(float));
}

// Small integers, exact in f32: rank r contributes (r+1)*(i%5+1) to all_reduce; all_to_all
// block b of rank a holds a*8 + b%8 + (j%4)*64 (the same values moe comm-bench checks).
inline float contrib(int r, size_t i) { return float((r + 1) * int(i % 5 + 1)); }
inline float reduced_sum(int n, size_t i) { return float(int(i % 5 + 1) * n * (n + 1) / 2); }
inline float tagval(int a, int b, size_t j) { return float(a * 8 + b % 8 + int(j % 4) * 64); }

inline void fill_input(std::vector<float>& in, const std::string& op, int me, int n) {
  const size_t block = in.size() / size_t(n);
  for (size_t i = 0; i < in.size(); ++i)
    in[i] = op == "all_to_all" ? tagval(me, int(i / block), i % block) : contrib(me, i);
}

inline long long count_wrong(const std::vector<float>& out, const std::string& op, int me,
                             int n) {
  const size_t block = out.size() / size_t(n);
  long long wrong = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const float want = op == "all_to_all" ? tagval(int(i / block), me, i % block)
                                          : reduced_sum(n, i);
    wrong += out[i] != want;
  }
  return wrong;
}

inline double bus_factor(const std::string& op, int n) {
  return op == "all_reduce" ? 2.0 * (n - 1) / n : double(n - 1) / n;
}

inline void print_header(const char* system, const Args& a, int n) {
  std::printf("# %s: %s, %d ranks, float, %s%s%s, %d warmup + %d timed iters\n", system,
              a.op.c_str(), n, a.op == "all_reduce" ? "sum" : "none",
              a.algo.empty() ? "" : ", algo ", a.algo.c_str(), a.warmup, a.iters);
  std::printf("#%12s %12s %8s %6s %10s %8s %8s %7s\n", "size", "count", "type", "redop", "time",
              "algbw", "busbw", "#wrong");
  std::printf("#%12s %12s %8s %6s %10s %8s %8s %7s\n", "(B)", "(elements)", "", "", "(us)",
              "(GB/s)", "(GB/s)", "");
}

// One row in moe comm-bench's columns; `secs` is the slowest rank's mean time per call.
inline void print_row(const Args& a, int n, size_t count, double secs, long long wrong) {
  const double bytes = double(count) * sizeof(float);
  const double algbw = bytes / secs / 1e9;
  std::printf(" %12llu %12llu %8s %6s %10.1f %8.3f %8.3f %7lld\n",
              static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(count),
              "float", a.op == "all_reduce" ? "sum" : "none", secs * 1e6, algbw,
              algbw * bus_factor(a.op, n), wrong);
  std::fflush(stdout);
}

}  // namespace moe_cbench
