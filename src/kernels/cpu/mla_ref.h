// Scalar twins of mla.h (same arguments, _ref suffix, templated on the element type so
// gradient checks run in double). One element at a time, no threads.
#pragma once

#include <cstdint>

namespace moe::cpu {

template <class T>
void mla_pack_qkv_ref(T* qkv, const T* q, const T* kv, const T* k_pe, int64_t kpe_stride, int64_t N,
                      int64_t H, int64_t dn, int64_t dr, int64_t dv, int64_t Da, T q_scale) {
  const int64_t dqk = dn + dr, C = 3 * H * Da;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      T* qo = qkv + n * C + h * Da;
      T* ko = qkv + n * C + (H + h) * Da;
      T* vo = qkv + n * C + (2 * H + h) * Da;
      const T* kvh = kv + n * H * (dn + dv) + h * (dn + dv);
      for (int64_t d = 0; d < Da; ++d) {
        qo[d] = d < dqk ? q[n * H * dqk + h * dqk + d] * q_scale : T(0);
        ko[d] = d < dn ? kvh[d] : d < dqk ? k_pe[n * kpe_stride + (d - dn)] : T(0);
        vo[d] = d < dv ? kvh[dn + d] : T(0);
      }
    }
  }
}

template <class T>
void mla_unpack_qkv_grad_ref(T* dq, T* dkv, T* dk_pe, int64_t kpe_stride, const T* dqkv, int64_t N,
                             int64_t H, int64_t dn, int64_t dr, int64_t dv, int64_t Da, T q_scale) {
  const int64_t dqk = dn + dr, C = 3 * H * Da;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < dr; ++j) dk_pe[n * kpe_stride + j] = T(0);
    for (int64_t h = 0; h < H; ++h) {
      const T* dqo = dqkv + n * C + h * Da;
      const T* dko = dqkv + n * C + (H + h) * Da;
      const T* dvo = dqkv + n * C + (2 * H + h) * Da;
      T* dkvh = dkv + n * H * (dn + dv) + h * (dn + dv);
      for (int64_t d = 0; d < dqk; ++d) dq[n * H * dqk + h * dqk + d] = dqo[d] * q_scale;
      for (int64_t d = 0; d < dn; ++d) dkvh[d] = dko[d];
      for (int64_t j = 0; j < dr; ++j) dk_pe[n * kpe_stride + j] += dko[dn + j];
      for (int64_t d = 0; d < dv; ++d) dkvh[dn + d] = dvo[d];
    }
  }
}

template <class T>
void heads_copy_ref(T* y, const T* x, int64_t N, int64_t H, int64_t dy, int64_t dx, int64_t width) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < dy; ++d)
        y[(n * H + h) * dy + d] = d < width ? x[(n * H + h) * dx + d] : T(0);
}

}  // namespace moe::cpu
