// Rotary position embedding, Hugging Face rotate_half convention: a head's Dh values are two
// halves [x1, x2] rotated pairwise (x1[i], x2[i]) by angle pos * theta^(-2i/Dh).
#include <cmath>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {

// Angles in double: float angles at position ~4096 are off by ~2e-4 rad.
void rope_tables(float* cos, float* sin, int64_t max_pos, int64_t Dh, double theta) {
  MOE_CHECK(max_pos >= 0 && Dh > 0 && Dh % 2 == 0, "rope_tables",
            "need max_pos >= 0 and an even Dh > 0, got max_pos=", max_pos, " Dh=", Dh);
  MOE_CHECK(theta > 0, "rope_tables", "theta must be > 0, got ", theta);
  const int64_t half = Dh / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(p) * std::pow(theta, -2.0 * double(i) / double(Dh));
      cos[p * half + i] = float(std::cos(angle));  // (max_pos, Dh/2)
      sin[p * half + i] = float(std::sin(angle));
    }
  }
}

void rope_apply(float* x, const float* cos, const float* sin, int64_t B, int64_t T,
                int64_t nheads, int64_t Dh, int64_t row_stride, int64_t pos0, bool inverse) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
  MOE_CHECK(B >= 0 && T >= 0 && nheads >= 0 && Dh > 0 && Dh % 2 == 0, "rope_apply",
            "need sizes >= 0 and an even Dh > 0, got B=", B, " T=", T, " nheads=", nheads,
            " Dh=", Dh);
  MOE_CHECK(row_stride >= nheads * Dh, "rope_apply", "row_stride ", row_stride,
            " is smaller than nheads*Dh = ", nheads * Dh);
  MOE_CHECK(pos0 >= 0, "rope_apply", "pos0 must be >= 0, got ", pos0);
  const int64_t half = Dh / 2;
  const float sign = inverse ? -1.0f : 1.0f;  // the inverse rotation is the transpose
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const int64_t pos = pos0 + bt % T;
    const float* c = cos + pos * half;  // (Dh/2)
    const float* s = sin + pos * half;
    for (int64_t h = 0; h < nheads; ++h) {
      float* v = x + bt * row_stride + h * Dh;  // (Dh) = [x1 | x2]
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[half + i], si = sign * s[i];
        v[i] = x1 * c[i] - x2 * si;
        v[half + i] = x2 * c[i] + x1 * si;
      }
    }
  }
}

}  // namespace moe::cpu
