// Small bf16 and f32 products on operands the caller lays out itself, for kernels that hold their
// operands in cache and would lose to a library call's fixed cost (the attention core's per-block
// products).
//
// The AVX-512 BF16 dot product (vdpbf16ps) multiplies pairs of bf16 values and adds both products
// to one f32 lane. The operands therefore hold pairs along the reduced dimension k: one uint32
// per pair, the even k in the low half. A (M x K) is read as A[m * a_rs + kp * a_ks] for the pair
// kp = k / 2, so the same kernel takes A or A^T as packed; B (K x N) is [Kp][ldb], the pairs of
// one kp contiguous along n. An odd K is padded with a zero high half.
//
// Products of bf16 values are exact in f32; the sums are f32, in k order within each lane. Without
// AVX-512 BF16 (quantize.h bf16_native(), or MOE_NO_AVX512_BF16=1) each pair is widened and
// added by two f32 FMAs: the same products and sums, slower. `gemm_bf16_pairs_ref` in ref.h is
// the scalar twin.
#pragma once

#include <cstdint>

#include "kernels/cpu/kernels.h"

namespace moe::cpu {

using bf16x2 = uint32_t;  // two bf16 values along k: low half k = 2 kp, high half k = 2 kp + 1

// Pairs along each row: dst[r * ld_dst + c / 2] holds src (r, c) and (r, c + 1); cols odd pads
// a zero. src is (rows, cols) with row stride ld_src. ld_dst >= (cols + 1) / 2.
void pack_pairs_in_rows(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
                        int64_t cols);
// The same pairs stored transposed: dst[(c / 2) * ld_dst + r]. For B = X^T with X (rows, cols)
// given row-major (the keys of Q K^T). ld_dst >= rows.
void pack_pairs_in_rows_t(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src,
                          int64_t rows, int64_t cols);
// Pairs down each column: dst[(r / 2) * ld_dst + c] holds src (r, c) and (r + 1, c); rows odd
// pads a zero. For B (K x N) given row-major, or A^T. ld_dst >= cols.
void pack_pairs_in_cols(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
                        int64_t cols);

// C (M, N), row stride ldc = alpha * A B + beta * C over Kp pairs; beta = 0 ignores C's values.
void gemm_bf16_pairs(float* C, int64_t ldc, const bf16x2* A, int64_t a_rs, int64_t a_ks,
                     const bf16x2* B, int64_t ldb, int64_t M, int64_t N, int64_t Kp, float alpha,
                     float beta);

// The f32 twin for the fp32 attention: C (M, N) = alpha * A B + beta * C over K, with A read as
// A[m * a_rs + k * a_ks] and B (K x N) as B[k * ldb + n], neither packed. Sums in k order per
// element. On operands in cache it runs at 90-95% of a core's FMA peak, level with oneDNN's
// sgemm (bench/bench_attention); inside the attention it skips the copies a library call makes
// of its operands on every call.
void gemm_f32_small(float* C, int64_t ldc, const float* A, int64_t a_rs, int64_t a_ks,
                    const float* B, int64_t ldb, int64_t M, int64_t N, int64_t K, float alpha,
                    float beta);

}  // namespace moe::cpu
