#include "kernels/cpu/peak.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>

namespace moe::cpu {

namespace {

// 12 independent accumulators per thread: FMA latency 4 cycles x 2 ports (Zen 4, Skylake-X)
// needs at least 8 in flight.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
double fma_loop(long iters) {
  __m512 a[12];
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_ps(float(k));
  for (long i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = _mm512_fmadd_ps(a[k], x, y);
  __m512 s = a[0];
  for (int k = 1; k < 12; ++k) s = _mm512_add_ps(s, a[k]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  double r = 0;
  for (float v : out) r += v;
  return r;
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
double fma_loop(long iters) {
  __m256 a[12];
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int k = 0; k < 12; ++k) a[k] = _mm256_set1_ps(float(k));
  for (long i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = _mm256_fmadd_ps(a[k], x, y);
  float out[8];
  __m256 s = a[0];
  for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, a[k]);
  _mm256_storeu_ps(out, s);
  double r = 0;
  for (float v : out) r += v;
  return r;
}
#else
constexpr int kLanes = 1;
double fma_loop(long iters) {
  float a[12];
  for (int k = 0; k < 12; ++k) a[k] = float(k);
  for (long i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = a[k] * 0.999999f + 1e-7f;
  double r = 0;
  for (float v : a) r += v;
  return r;
}
#endif

}  // namespace

int fp32_vector_lanes() { return kLanes; }

double measure_fp32_peak_flops(double seconds) {
  const int threads = omp_get_max_threads();
  const double flops_per_iter = 12.0 * kLanes * 2.0;
  // Calibrate the iteration count on one thread, then take the best of 5 parallel runs.
  long iters = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile double sink = fma_loop(iters);
    (void)sink;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.01 || iters > (1L << 34)) {
      iters = std::max(1L, long(double(iters) * (seconds / 5.0) / dt));
      break;
    }
    iters *= 4;
  }
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += fma_loop(iters);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile double keep = sink;
    (void)keep;
    best = std::max(best, flops_per_iter * double(iters) * threads / dt);
  }
  return best;
}

}  // namespace moe::cpu
