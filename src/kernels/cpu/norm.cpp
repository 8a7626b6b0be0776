// RMSNorm forward and backward. Rows are independent, so forward and dx run one row per
// iteration across threads; dw sums over rows, so it runs as a second pass in which each
// thread owns a slice of columns and adds rows in order: deterministic for any thread count,
// no atomics and no scratch.
#include <cmath>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {
constexpr int64_t kColChunk = 64;  // columns per dw task: one 256-byte run per row
}  // namespace

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     float eps) {
  const prof::Scope prof_scope(prof::Part::kNorm);
  MOE_CHECK(N >= 0 && D > 0, "rmsnorm_forward", "need N >= 0 and D > 0, got N=", N, " D=", D);
  MOE_CHECK(eps >= 0, "rmsnorm_forward", "eps must be >= 0, got ", eps);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;  // (D)
    float* yr = y + n * D;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += xr[d] * xr[d];
    const float r = 1.0f / std::sqrt(ss / float(D) + eps);
    rstd[n] = r;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * r * w[d];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D) {
  const prof::Scope prof_scope(prof::Part::kNorm);
  MOE_CHECK(N >= 0 && D > 0, "rmsnorm_backward", "need N >= 0 and D > 0, got N=", N, " D=", D);
  // dx += r*(dy*w) - x * r^3/D * sum(dy*w*x)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * D;
    const float* dyr = dy + n * D;
    float* dxr = dx + n * D;
    const float r = rstd[n];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += dyr[d] * w[d] * xr[d];
    const float c = r * r * r * dot / float(D);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dxr[d] += r * dyr[d] * w[d] - xr[d] * c;
  }
  // dw += sum_n dy*x*r, column slices in parallel, rows in order.
  const int64_t chunks = (D + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t d0 = c * kColChunk, d1 = d0 + kColChunk < D ? d0 + kColChunk : D;
    float acc[kColChunk] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float r = rstd[n];
      const float* xr = x + n * D;
      const float* dyr = dy + n * D;
#pragma omp simd
      for (int64_t d = d0; d < d1; ++d) acc[d - d0] += dyr[d] * xr[d] * r;
    }
    for (int64_t d = d0; d < d1; ++d) dw[d] += acc[d - d0];
  }
}

}  // namespace moe::cpu
