// AdamW with decoupled weight decay, in PyTorch's order of operations (torch.optim.AdamW,
// single-tensor path): decay, moments, then the bias-corrected step. Bias corrections are
// computed in double as PyTorch does in Python.
//
// The update is memory-bound (4 streams in, 3 out) only once sqrt and divide run 16 wide: the
// compiler keeps std::sqrt scalar (errno), so the AVX-512 path is written with intrinsics. Every
// element, the tail included (masked), goes through the same instructions, so results do not
// depend on where a thread's chunk starts.
#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {

void adamw_step(float* p, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
  const prof::Scope prof_scope(prof::Part::kOptimizer);
  MOE_CHECK(n >= 0, "adamw_step", "n must be >= 0, got ", n);
  MOE_CHECK(step >= 1, "adamw_step", "step is 1-based, got ", step);
  MOE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "adamw_step",
            "betas must be in [0, 1), got beta1=", beta1, " beta2=", beta2);
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  const float decay = float(1.0 - double(lr) * double(weight_decay));
  const float step_size = float(double(lr) / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
#if defined(__AVX512F__)
  constexpr int64_t kW = 16;
  const int64_t chunks = (n + kW - 1) / kW;
  const __m512 vb1 = _mm512_set1_ps(beta1), vb2 = _mm512_set1_ps(beta2);
  const __m512 v1b1 = _mm512_set1_ps(one_m_b1), v1b2 = _mm512_set1_ps(one_m_b2);
  const __m512 vbc2 = _mm512_set1_ps(bc2_sqrt), veps = _mm512_set1_ps(eps);
  const __m512 vdecay = _mm512_set1_ps(decay), vstep = _mm512_set1_ps(step_size);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i = c * kW;
    const __mmask16 k = n - i >= kW ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 gi = _mm512_maskz_loadu_ps(k, g + i);
    // m = b1 m + (1-b1) g ; v = b2 v + (1-b2) g g
    const __m512 mi =
        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, m + i), vb1, _mm512_mul_ps(gi, v1b1));
    const __m512 vi = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, v + i), vb2,
                                      _mm512_mul_ps(_mm512_mul_ps(v1b2, gi), gi));
    _mm512_mask_storeu_ps(m + i, k, mi);
    _mm512_mask_storeu_ps(v + i, k, vi);
    // (masked sqrt: the unmasked form trips GCC 12's -Wmaybe-uninitialized)
    const __m512 denom =
        _mm512_add_ps(_mm512_div_ps(_mm512_mask_sqrt_ps(vi, k, vi), vbc2), veps);
    const __m512 upd = _mm512_div_ps(_mm512_mul_ps(vstep, mi), denom);
    const __m512 pi = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, p + i), vdecay, upd);
    _mm512_mask_storeu_ps(p + i, k, pi);
  }
#else
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] * beta1 + gi * one_m_b1;
    const float vi = v[i] * beta2 + one_m_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * mi / denom;
  }
#endif
}

}  // namespace moe::cpu
