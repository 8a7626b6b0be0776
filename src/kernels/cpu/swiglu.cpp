// SwiGLU activation on the stacked gate/up projection: h = silu(gate) * up.
#include <cstdint>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/exp_fast.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {

void swiglu_forward(float* h, const float* gu, int64_t N, int64_t F) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
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
  const prof::Scope prof_scope(prof::Part::kElementwise);
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
