// MLA's q, k and v as packed heads for the GQA attention kernel (mla.h).
#include "kernels/cpu/mla.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace moe::cpu {

namespace {
void check_sizes(const char* op, int64_t N, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                 int64_t Da, int64_t kpe_stride) {
  MOE_CHECK(N >= 0 && H > 0 && dn >= 0 && dr >= 0 && dv > 0, op,
            "need N >= 0, H > 0, dn >= 0, dr >= 0, dv > 0; got N=", N, " H=", H, " dn=", dn,
            " dr=", dr, " dv=", dv);
  MOE_CHECK(Da >= dn + dr && Da >= dv, op, "head width Da = ", Da, " must hold dn + dr = ", dn + dr,
            " and dv = ", dv);
  MOE_CHECK(kpe_stride >= dr, op, "kpe_stride ", kpe_stride, " is smaller than dr = ", dr);
}
}  // namespace

void mla_pack_qkv(float* qkv, const float* q, const float* kv, const float* k_pe,
                  int64_t kpe_stride, int64_t N, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                  int64_t Da, float q_scale) {
  check_sizes("mla_pack_qkv", N, H, dn, dr, dv, Da, kpe_stride);
  const int64_t dqk = dn + dr, C = 3 * H * Da;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = qkv + n * C;
    std::fill(row, row + C, 0.0f);
    const float* qn = q + n * H * dqk;
    const float* kvn = kv + n * H * (dn + dv);
    const float* pe = k_pe + n * kpe_stride;
    for (int64_t h = 0; h < H; ++h) {
      float* qo = row + h * Da;
      float* ko = row + (H + h) * Da;
      float* vo = row + (2 * H + h) * Da;
      const float* qh = qn + h * dqk;
      const float* kvh = kvn + h * (dn + dv);
      if (q_scale == 1.0f) {
        std::memcpy(qo, qh, sizeof(float) * size_t(dqk));
      } else {
        for (int64_t d = 0; d < dqk; ++d) qo[d] = qh[d] * q_scale;
      }
      std::memcpy(ko, kvh, sizeof(float) * size_t(dn));
      std::memcpy(ko + dn, pe, sizeof(float) * size_t(dr));
      std::memcpy(vo, kvh + dn, sizeof(float) * size_t(dv));
    }
  }
}

void mla_unpack_qkv_grad(float* dq, float* dkv, float* dk_pe, int64_t kpe_stride, const float* dqkv,
                         int64_t N, int64_t H, int64_t dn, int64_t dr, int64_t dv, int64_t Da,
                         float q_scale) {
  check_sizes("mla_unpack_qkv_grad", N, H, dn, dr, dv, Da, kpe_stride);
  const int64_t dqk = dn + dr, C = 3 * H * Da;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = dqkv + n * C;
    float* pe = dk_pe + n * kpe_stride;
    std::fill(pe, pe + dr, 0.0f);
    for (int64_t h = 0; h < H; ++h) {  // heads in order: a fixed summation order for dk_pe
      const float* dqo = row + h * Da;
      const float* dko = row + (H + h) * Da;
      const float* dvo = row + (2 * H + h) * Da;
      float* dqh = dq + n * H * dqk + h * dqk;
      float* dkvh = dkv + n * H * (dn + dv) + h * (dn + dv);
      for (int64_t d = 0; d < dqk; ++d) dqh[d] = dqo[d] * q_scale;
      std::memcpy(dkvh, dko, sizeof(float) * size_t(dn));
      for (int64_t j = 0; j < dr; ++j) pe[j] += dko[dn + j];
      std::memcpy(dkvh + dn, dvo, sizeof(float) * size_t(dv));
    }
  }
}

void heads_copy(float* y, const float* x, int64_t N, int64_t H, int64_t dy, int64_t dx,
                int64_t width) {
  MOE_CHECK(N >= 0 && H > 0 && width >= 0 && width <= dx && width <= dy, "heads_copy",
            "need width <= dx and width <= dy; got N=", N, " H=", H, " dy=", dy, " dx=", dx,
            " width=", width);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N * H; ++r) {
    float* yo = y + r * dy;
    std::memcpy(yo, x + r * dx, sizeof(float) * size_t(width));
    std::fill(yo + width, yo + dy, 0.0f);
  }
}

}  // namespace moe::cpu
