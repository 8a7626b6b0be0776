// INT8 inference kernels: int8 weights with one scale per output channel, activations
// quantized on the fly to u8 with one scale and zero point per row (token), and the product
// as a u8 x s8 -> s32 matmul on oneDNN (VNNI `vpdpbusd` on CPUs that have it).
//
// Conventions as kernels.h (output first, then inputs, then sizes; no logging). Scratch lives in
// per-thread grow-only buffers, as oneDNN's scratchpad does in gemm.cpp. Each kernel has a
// scalar *_ref twin in int8_ref.h doing the same quantization and integer dot products in
// plain loops.
//
// The numerics, for one row x (in) and one output channel o with int8 weights q_o (in):
//   weights:     scale_w[o] = max_i |W[o,i]| / 127,  q[o,i] = rne(W[o,i] / scale_w[o]) in [-127,
//   127] activations: lo = min(0, min x), hi = max(0, max x), s = (hi - lo) / 255,
//                zp = rne(-lo / s) in [0, 255],     xq[i] = clamp(rne(x[i] / s) + zp, 0, 255)
//   output:      y[o] = s * scale_w[o] * (sum_i xq[i] q[o,i]  -  zp * sum_i q[o,i])
// so |x[i] - s (xq[i] - zp)| <= s/2 and |W[o,i] - scale_w[o] q[o,i]| <= scale_w[o]/2, and
//   |y - x.W_o| <= scale_w[o]/2 * ||x||_1 + s/2 * ||scale_w[o] q_o||_1   (exact integer sums).
// (rne: round to nearest, ties to even.) The sum of q[o,:] (w_sum) is the zero-point
// correction; it depends only on the weights, so callers precompute it with int8_row_sums.
#pragma once

#include <cstdint>
#include <string>

namespace moe::cpu {

// W [out, in] fp32 -> q [out, in] int8 and scale (out), per output row as above. A row of
// zeros gets q = 0 and scale = 1 (it dequantizes to exactly 0 and nothing divides by 0).
// Throws naming the row if W holds a non-finite value.
void quantize_weight_int8(int8_t* q, float* scale, const float* W, int64_t out, int64_t in);

// sum (out) = sum over i of q[o, i]: the zero-point correction of linear_forward_int8.
void int8_row_sums(int32_t* sum, const int8_t* q, int64_t out, int64_t in);

// Per-row asymmetric u8 quantization of x (N, in) as above: xq (N, in), scale (N), zp (N).
// A row of zeros gets scale 1 and zp 0. A row with a non-finite value gets scale NaN (its
// outputs in linear_forward_int8 are NaN) and xq = zp = 0.
void quantize_rows_u8(uint8_t* xq, float* scale, int32_t* zp, const float* x, int64_t N,
                      int64_t in);

// y (N, out) = x (N, in) @ W^T with W given as int8 q [out, in] and w_scale (out). x is
// quantized per row to u8 (quantize_rows_u8); the product runs as one u8s8s32 matmul; then the
// zero-point correction and both scales are applied in fp32. w_sum (out) from int8_row_sums,
// or null to compute it here (costs one more pass over q). N = 0 or out = 0: no-op.
void linear_forward_int8(float* y, const float* x, const int8_t* Wq, const float* w_scale,
                         const int32_t* w_sum, int64_t N, int64_t in, int64_t out);

// Grouped over experts, offsets as grouped_linear_forward (kernels.h): rows [offsets[e],
// offsets[e+1]) of x use expert e's q at Wq + e * w_stride ([out, in], int8 elements) and its
// scales and row sums at w_scale + e * s_stride and w_sum + e * s_stride (w_sum may be null).
void grouped_linear_forward_int8(float* y, const float* x, const int8_t* Wq, int64_t w_stride,
                                 const float* w_scale, const int32_t* w_sum, int64_t s_stride,
                                 const int64_t* offsets, int64_t E, int64_t in, int64_t out);

// oneDNN's implementation name for the u8s8s32 matmul of M rows (the one the kernels above use
// for that M), e.g. "brg:avx512_core_vnni" or "gemm:jit" (both use vpdpbusd on VNNI CPUs);
// "ref" would mean the slow reference path. For tests and benchmarks.
std::string int8_matmul_impl(int64_t M, int64_t in, int64_t out);

}  // namespace moe::cpu
