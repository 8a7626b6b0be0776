// INT8 linear layers on oneDNN's u8s8s32 matmul (see int8.h for the numerics).
//
// Which oneDNN implementation runs (oneDNN 2.6, measured on an AVX-512 VNNI CPU): a primitive
// with a fixed M picks brgemm ("brg:avx512_core_vnni"); one with a runtime M picks the jit int8
// GEMM ("gemm:jit", whose s8u8s32 kernels and s8x8s32 GEMV are also vpdpbusd code). For one row
// (decoding) the GEMV is 3-5x faster than brgemm, which repacks the [in, out] weights on every
// call; from 16 rows on brgemm wins. So: fewer than kFixedMinRows rows take the runtime-M
// primitive, more rows a primitive cached for that exact M (at most kMaxFixed shapes, then
// runtime M again), and the grouped kernel's full tasks of kTaskRows rows a fixed one.
//
// The zero-point correction and the scales are applied by our own epilogue: oneDNN 2.6 takes
// one src zero point and output scales per column only, and ours change per row.
// Scratch (quantized rows, s32 products, oneDNN scratchpads) is per-thread and grow-only.
#include "kernels/cpu/int8.h"

#include <omp.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/onednn.h"

namespace moe::cpu {
namespace {

using dnnl::memory;
using Dims = memory::dims;
constexpr int64_t kRt = DNNL_RUNTIME_DIM_VAL;
constexpr int64_t kFixedMinRows = 16;
constexpr int64_t kTaskRows = 256;
constexpr size_t kMaxFixed = 64;
// Element-wise loops below this many elements stay on one thread (a fork costs more).
constexpr int64_t kParallelMin = 1 << 15;




// src u8 [M, in], weights s8 [in, out] read from q [out, in] (strides {1, in}), dst s32 [M, out].
memory::desc src_desc(int64_t M, int64_t in) {
  return memory::desc({M, in}, memory::data_type::u8, Dims{in, 1});
}
memory::desc wei_desc(int64_t in, int64_t out) {
  return memory::desc({in, out}, memory::data_type::s8, Dims{1, in});
}
memory::desc dst_desc(int64_t M, int64_t out) {
  return memory::desc({M, out}, memory::data_type::s32, Dims{out, 1});
}

struct Prim {
  dnnl::matmul matmul;
  size_t scratch_bytes;
  std::string impl;
};

class Int8Cache {
 public:
  // M may be kRt.
  const Prim& get(int64_t M, int64_t in, int64_t out) {
    const auto key = std::make_tuple(M, in, out);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::desc desc(src_desc(M, in), wei_desc(in, out), dst_desc(M, out));
    const dnnl::matmul::primitive_desc pd(desc, attr, onednn_engine());
    if (M != kRt) ++fixed_;
    return cache_
        .emplace(key, Prim{dnnl::matmul(pd), pd.scratchpad_desc().get_size(), pd.impl_info_str()})
        .first->second;
  }
  // The primitive for M rows: runtime M for few rows or once kMaxFixed shapes are cached.
  const Prim& for_rows(int64_t M, int64_t in, int64_t out) {
    bool fixed = M >= kFixedMinRows;
    if (fixed) {
      std::lock_guard<std::mutex> lock(mu_);
      fixed = fixed_ < kMaxFixed || cache_.count(std::make_tuple(M, in, out)) > 0;
    }
    return get(fixed ? M : kRt, in, out);
  }

 private:
  std::mutex mu_;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Prim> cache_;  // nodes are stable
  size_t fixed_ = 0;
};

Int8Cache& cache() {
  static Int8Cache c;
  return c;
}

// acc (M, out) s32 = xq (M, in) u8 @ q^T.
void run(const Prim& p, int32_t* acc, const uint8_t* xq, const int8_t* q, int64_t M, int64_t in,
         int64_t out) {
  auto& eng = onednn_engine();
  memory a(src_desc(M, in), eng, const_cast<uint8_t*>(xq));
  memory b(wei_desc(in, out), eng, const_cast<int8_t*>(q));
  memory c(dst_desc(M, out), eng, acc);
  memory pad(memory::desc({int64_t(p.scratch_bytes)}, memory::data_type::u8, Dims{1}), eng,
             thread_buffer<char, 0>(p.scratch_bytes));
  auto& stream = onednn_thread_stream();
  p.matmul.execute(
      stream,
      {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}, {DNNL_ARG_SCRATCHPAD, pad}});
  stream.wait();
}

// One row of quantize_rows_u8 (the formulas of int8_ref.h, in the same order). With AVX-512
// the two passes run 16 lanes at a time with the same results: min/max are exact, the
// division is IEEE, and roundscale rounds to nearest even as nearbyint does.
void quantize_row(uint8_t* xq, float* scale, int32_t* zp, const float* r, int64_t in) {
  float lo = 0, hi = 0;
  bool finite = true;
#if defined(__AVX512F__)
  // maskz forms with a full mask: the plain ones trip GCC 12's -Wmaybe-uninitialized.
  constexpr __mmask16 kAll = 0xffff;
  {
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    __mmask16 bad = 0;
    const __m512i exp_mask = _mm512_set1_epi32(0x7f800000);
    for (int64_t i = 0; i < in; i += 16) {
      const __mmask16 m = in - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (in - i)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(m, r + i);  // masked lanes are 0: no effect
      bad |= _mm512_mask_cmpeq_epi32_mask(m, _mm512_and_si512(_mm512_castps_si512(v), exp_mask),
                                          exp_mask);
      vlo = _mm512_maskz_min_ps(kAll, v, vlo);
      vhi = _mm512_maskz_max_ps(kAll, v, vhi);
    }
    finite = bad == 0;
    alignas(64) float l[16], h[16];
    _mm512_store_ps(l, vlo);
    _mm512_store_ps(h, vhi);
    for (int k = 0; k < 16; ++k) lo = std::min(lo, l[k]), hi = std::max(hi, h[k]);
  }
#else
  for (int64_t i = 0; i < in; ++i) {
    finite = finite && std::isfinite(r[i]);
    lo = std::min(lo, r[i]);
    hi = std::max(hi, r[i]);
  }
#endif
  if (!finite) {
    *scale = std::numeric_limits<float>::quiet_NaN();
    *zp = 0;
    std::memset(xq, 0, size_t(in));
    return;
  }
  const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  const float z = std::min(255.0f, std::max(0.0f, std::nearbyint(-lo / s)));
  *scale = s;
  *zp = static_cast<int32_t>(z);
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
  const __m512 v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.0f);
  for (; i < in; i += 16) {
    const __mmask16 m = in - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (in - i)) - 1);
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, r + i), vs);
    v = _mm512_add_ps(
        _mm512_maskz_roundscale_ps(kAll, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
    v = _mm512_maskz_min_ps(kAll, v255, _mm512_maskz_max_ps(kAll, v0, v));
    _mm512_mask_cvtepi32_storeu_epi8(xq + i, m, _mm512_maskz_cvtps_epi32(kAll, v));
  }
#endif
  for (; i < in; ++i) {
    const float v = std::nearbyint(r[i] / s) + z;
    xq[i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, v)));
  }
}

// y (M, out) = xs[m] * w_scale[o] * (acc - zp[m] * w_sum[o]).
void epilogue(float* y, const int32_t* acc, const float* xs, const int32_t* xz,
              const float* w_scale, const int32_t* w_sum, int64_t M, int64_t out) {
  for (int64_t m = 0; m < M; ++m) {
    const int64_t z = xz[m];
    const float s = xs[m];
    const int32_t* a = acc + m * out;
    float* yr = y + m * out;
    for (int64_t o = 0; o < out; ++o)
      yr[o] = s * w_scale[o] * static_cast<float>(int64_t(a[o]) - z * int64_t(w_sum[o]));
  }
}

void check_sizes(const char* op, int64_t N, int64_t in, int64_t out) {
  MOE_CHECK(N >= 0 && in >= 0 && out >= 0, op, "sizes must be >= 0, got N=", N, " in=", in,
            " out=", out);
  // Largest |sum| of one output: in * 255 * 127 must fit in the s32 accumulator.
  MOE_CHECK(in <= std::numeric_limits<int32_t>::max() / (255 * 127), op, "in=", in,
            " is too long for an s32 accumulator of u8 x s8 products (at most ",
            std::numeric_limits<int32_t>::max() / (255 * 127), "); split the layer");
}

}  // namespace

void quantize_weight_int8(int8_t* q, float* scale, const float* W, int64_t out, int64_t in) {
  MOE_CHECK(out >= 0 && in >= 0, "quantize_weight_int8", "sizes must be >= 0, got out=", out,
            " in=", in);
  int64_t bad = -1;
#pragma omp parallel for schedule(static) if (out * in >= kParallelMin)
  for (int64_t o = 0; o < out; ++o) {
    const float* w = W + o * in;
    float amax = 0;
    bool finite = true;
    for (int64_t i = 0; i < in; ++i) {
      finite = finite && std::isfinite(w[i]);
      amax = std::max(amax, std::fabs(w[i]));
    }
    if (!finite) {
#pragma omp critical(moe_int8_bad_row)
      bad = bad < 0 ? o : std::min(bad, o);
      continue;
    }
    const float s = amax > 0 ? amax / 127.0f : 1.0f;
    scale[o] = s;
    for (int64_t i = 0; i < in; ++i) {
      const float v = std::nearbyint(w[i] / s);
      q[o * in + i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
  MOE_CHECK(bad < 0, "quantize_weight_int8", "row ", bad, " of a [", out, ", ", in,
            "] weight holds a non-finite value (NaN or inf); the weights are broken, use an "
            "earlier checkpoint");
}

void int8_row_sums(int32_t* sum, const int8_t* q, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static) if (out * in >= kParallelMin)
  for (int64_t o = 0; o < out; ++o) {
    int32_t s = 0;
    for (int64_t i = 0; i < in; ++i) s += q[o * in + i];
    sum[o] = s;
  }
}

void quantize_rows_u8(uint8_t* xq, float* scale, int32_t* zp, const float* x, int64_t N,
                      int64_t in) {
#pragma omp parallel for schedule(static) if (N * in >= kParallelMin && N > 1)
  for (int64_t n = 0; n < N; ++n) quantize_row(xq + n * in, scale + n, zp + n, x + n * in, in);
}

void linear_forward_int8(float* y, const float* x, const int8_t* Wq, const float* w_scale,
                         const int32_t* w_sum, int64_t N, int64_t in, int64_t out) {
  check_sizes("linear_forward_int8", N, in, out);
  if (N == 0 || out == 0) return;
  if (in == 0) {
    std::memset(y, 0, sizeof(float) * size_t(N * out));
    return;
  }
  MOE_CHECK(y && x && Wq && w_scale, "linear_forward_int8", "null tensor for N=", N, " in=", in,
            " out=", out);
  uint8_t* xq = thread_buffer<uint8_t, 1>(size_t(N * in));
  float* xs = thread_buffer<float, 2>(size_t(N));
  int32_t* xz = thread_buffer<int32_t, 3>(size_t(N));
  int32_t* acc = thread_buffer<int32_t, 4>(size_t(N * out));
  if (!w_sum) {
    int32_t* s = thread_buffer<int32_t, 5>(size_t(out));
    int8_row_sums(s, Wq, out, in);
    w_sum = s;
  }
  quantize_rows_u8(xq, xs, xz, x, N, in);
  run(cache().for_rows(N, in, out), acc, xq, Wq, N, in, out);
  if (N * out >= kParallelMin && N > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      epilogue(y + n * out, acc + n * out, xs + n, xz + n, w_scale, w_sum, 1, out);
  } else {
    epilogue(y, acc, xs, xz, w_scale, w_sum, N, out);
  }
}

void grouped_linear_forward_int8(float* y, const float* x, const int8_t* Wq, int64_t w_stride,
                                 const float* w_scale, const int32_t* w_sum, int64_t s_stride,
                                 const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  const char* op = "grouped_linear_forward_int8";
  MOE_CHECK(E >= 0, op, "E must be >= 0, got ", E);
  MOE_CHECK(E == 0 || offsets != nullptr, op, "offsets is null (needs E+1 = ", E + 1, " entries)");
  if (E == 0) return;
  MOE_CHECK(offsets[0] == 0, op, "offsets[0] must be 0, got ", offsets[0]);
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[e + 1] >= offsets[e], op, "offsets must be non-decreasing, offsets[", e,
              "]=", offsets[e], " > offsets[", e + 1, "]=", offsets[e + 1]);
  const int64_t N = offsets[E];
  check_sizes(op, N, in, out);
  if (N == 0 || out == 0) return;
  if (in == 0) {
    std::memset(y, 0, sizeof(float) * size_t(N * out));
    return;
  }
  uint8_t* xq = thread_buffer<uint8_t, 1>(size_t(N * in));
  float* xs = thread_buffer<float, 2>(size_t(N));
  int32_t* xz = thread_buffer<int32_t, 3>(size_t(N));
  quantize_rows_u8(xq, xs, xz, x, N, in);
  int32_t* sums = nullptr;
  if (!w_sum) {  // the row sums of every expert with rows, laid out with stride s_stride
    sums = thread_buffer<int32_t, 5>(size_t(E * s_stride));
    for (int64_t e = 0; e < E; ++e)
      if (offsets[e + 1] > offsets[e])
        int8_row_sums(sums + e * s_stride, Wq + e * w_stride, out, in);
    w_sum = sums;
  }
  // Tasks of up to kTaskRows rows of one expert, each a single-threaded matmul (as gemm.cpp's
  // grouped kernels): fixed sizes, so the result does not depend on the thread count.
  int64_t count = 0;
  for (int64_t e = 0; e < E; ++e)
    count += (offsets[e + 1] - offsets[e] + kTaskRows - 1) / kTaskRows;
  const Prim& rt = cache().get(kRt, in, out);
  const Prim& full = cache().get(kTaskRows, in, out);
#pragma omp parallel for schedule(dynamic, 1) if (count > 1)
  for (int64_t t = 0; t < count; ++t) {
    int64_t e = 0, first = 0;
    for (;; ++e) {
      const int64_t n = (offsets[e + 1] - offsets[e] + kTaskRows - 1) / kTaskRows;
      if (t < first + n) break;
      first += n;
    }
    const int64_t r = offsets[e] + (t - first) * kTaskRows;
    const int64_t n = std::min(kTaskRows, offsets[e + 1] - r);
    int32_t* acc = thread_buffer<int32_t, 4>(size_t(n * out));
    run(n == kTaskRows ? full : rt, acc, xq + r * in, Wq + e * w_stride, n, in, out);
    epilogue(y + r * out, acc, xs + r, xz + r, w_scale + e * s_stride, w_sum + e * s_stride, n,
             out);
  }
}

std::string int8_matmul_impl(int64_t M, int64_t in, int64_t out) {
  return cache().for_rows(M, in, out).impl;
}

}  // namespace moe::cpu
