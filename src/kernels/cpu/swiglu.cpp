// SwiGLU activation on the stacked gate/up projection: h = silu(gate) * up.
#include <bit>
#include <cstdint>
#include <limits>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {

// exp(x) within ~2 ulp (Cephes expf polynomial); 0 below -87.3 and inf above 88.3 (the
// float range edges). Plain arithmetic, so loops over it vectorize (std::exp does not
// without -ffast-math).
inline float exp_fast(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);  // 2^n
  const float inf = std::numeric_limits<float>::infinity();
  return x < -87.3f ? 0.0f : (x > 88.3f ? inf : p * scale);
}

}  // namespace

void swiglu_forward(float* h, const float* gu, int64_t N, int64_t F) {
  MOE_CHECK(N >= 0 && F >= 0, "swiglu_forward", "sizes must be >= 0, got N=", N, " F=", F);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gu + n * 2 * F;  // (F) gate
    const float* u = g + F;           // (F) up
    float* hr = h + n * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) hr[f] = g[f] / (1.0f + exp_fast(-g[f])) * u[f];
  }
}

void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t N, int64_t F) {
  MOE_CHECK(N >= 0 && F >= 0, "swiglu_backward", "sizes must be >= 0, got N=", N, " F=", F);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = gu + n * 2 * F;
    const float* u = g + F;
    const float* d = dh + n * F;
    float* dg = dgu + n * 2 * F;
    float* du = dg + F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      const float sig = 1.0f / (1.0f + exp_fast(-g[f]));
      dg[f] = d[f] * u[f] * sig * (1.0f + g[f] * (1.0f - sig));  // d silu(g) / dg
      du[f] = d[f] * g[f] * sig;
    }
  }
}

}  // namespace moe::cpu
