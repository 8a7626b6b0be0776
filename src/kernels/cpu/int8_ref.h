// Scalar reference twins of int8.h: the same quantization formulas, one element at a time,
// integer dot products in int64, no threads, no oneDNN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace moe::cpu {

inline void quantize_weight_int8_ref(int8_t* q, float* scale, const float* W, int64_t out,
                                     int64_t in) {
  for (int64_t o = 0; o < out; ++o) {
    float amax = 0;
    for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(W[o * in + i]));
    scale[o] = amax > 0 ? amax / 127.0f : 1.0f;
    for (int64_t i = 0; i < in; ++i) {
      const float v = std::nearbyint(W[o * in + i] / scale[o]);
      q[o * in + i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
}

inline void int8_row_sums_ref(int32_t* sum, const int8_t* q, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) {
    int32_t s = 0;
    for (int64_t i = 0; i < in; ++i) s += q[o * in + i];
    sum[o] = s;
  }
}

inline void quantize_rows_u8_ref(uint8_t* xq, float* scale, int32_t* zp, const float* x, int64_t N,
                                 int64_t in) {
  for (int64_t n = 0; n < N; ++n) {
    const float* r = x + n * in;
    float lo = 0, hi = 0;
    bool finite = true;
    for (int64_t i = 0; i < in; ++i) {
      finite = finite && std::isfinite(r[i]);
      lo = std::min(lo, r[i]);
      hi = std::max(hi, r[i]);
    }
    if (!finite) {
      scale[n] = std::numeric_limits<float>::quiet_NaN();
      zp[n] = 0;
      std::fill(xq + n * in, xq + (n + 1) * in, uint8_t(0));
      continue;
    }
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    const float z = std::min(255.0f, std::max(0.0f, std::nearbyint(-lo / s)));
    scale[n] = s;
    zp[n] = static_cast<int32_t>(z);
    for (int64_t i = 0; i < in; ++i) {
      const float v = std::nearbyint(r[i] / s) + z;
      xq[n * in + i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, v)));
    }
  }
}

// Quantizes x itself, then y[n,o] = s[n] * w_scale[o] * (sum_i xq q - zp[n] * sum_i q).
// xq (N*in), xs (N), xz (N) are the caller's scratch.
inline void linear_forward_int8_ref(float* y, const float* x, const int8_t* Wq,
                                    const float* w_scale, int64_t N, int64_t in, int64_t out,
                                    uint8_t* xq, float* xs, int32_t* xz) {
  quantize_rows_u8_ref(xq, xs, xz, x, N, in);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      int64_t acc = 0, wsum = 0;
      for (int64_t i = 0; i < in; ++i) {
        acc += int64_t(xq[n * in + i]) * int64_t(Wq[o * in + i]);
        wsum += Wq[o * in + i];
      }
      y[n * out + o] = xs[n] * w_scale[o] * static_cast<float>(acc - int64_t(xz[n]) * wsum);
    }
}

inline void grouped_linear_forward_int8_ref(float* y, const float* x, const int8_t* Wq,
                                            int64_t w_stride, const float* w_scale,
                                            int64_t s_stride, const int64_t* offsets, int64_t E,
                                            int64_t in, int64_t out, uint8_t* xq, float* xs,
                                            int32_t* xz) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    linear_forward_int8_ref(y + r0 * out, x + r0 * in, Wq + e * w_stride, w_scale + e * s_stride,
                            rows, in, out, xq + r0 * in, xs + r0, xz + r0);
  }
}

}  // namespace moe::cpu
