// AdamW with decoupled weight decay, in PyTorch's order of operations (torch.optim.AdamW,
// single-tensor path): decay, moments, then the bias-corrected step. Bias corrections are
// computed in double as PyTorch does in Python.
#include <cmath>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {

void adamw_step(float* p, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
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
}

}  // namespace moe::cpu
