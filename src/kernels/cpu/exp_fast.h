// exp() for the CPU kernels' inner loops (softmax, cross-entropy, SiLU).
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

namespace moe::cpu {

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

}  // namespace moe::cpu
