// Packing into bf16 pairs and the register-tiled products over them or over f32; see bf16_pairs.h.
//
// The product keeps a tile of MR rows x NR * 16 columns of C in registers (6 x 64 with f32 or the
// BF16 dot product: 24 accumulators, 4 B vectors, 1 broadcast A value) and walks k; the
// columns run in panels of 64 outside the rows, so one panel of B (K x 64) stays in cache
// while the rows of A stream past it. The last vector of a panel loads and stores under a mask,
// so no operand needs padding.
#include "kernels/cpu/bf16_pairs.h"

#include <algorithm>
#include <bit>
#include <type_traits>

#include "kernels/cpu/quantize.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace moe::cpu {

void pack_pairs_in_rows(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
                        int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    // A row of pairs is the row cast to bf16, laid out in order (the low half is the even k).
    bf16* d = reinterpret_cast<bf16*>(dst + r * ld_dst);
    const float* s = src + r * ld_src;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) d[c] = to_bf16(s[c]);
    if (cols & 1) d[cols] = 0;
  }
}

void pack_pairs_in_rows_t(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src,
                          int64_t rows, int64_t cols) {
  const int64_t full = cols / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * ld_src;
    for (int64_t p = 0; p < full; ++p)
      dst[p * ld_dst + r] = bf16x2(to_bf16(s[2 * p])) | (bf16x2(to_bf16(s[2 * p + 1])) << 16);
    if (cols & 1) dst[full * ld_dst + r] = bf16x2(to_bf16(s[cols - 1]));
  }
}

void pack_pairs_in_cols(bf16x2* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
                        int64_t cols) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* s0 = src + r * ld_src;
    bf16x2* d = dst + (r / 2) * ld_dst;
    if (r + 1 < rows) {
      const float* s1 = s0 + ld_src;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c)
        d[c] = bf16x2(to_bf16(s0[c])) | (bf16x2(to_bf16(s1[c])) << 16);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) d[c] = bf16x2(to_bf16(s0[c]));
    }
  }
}

namespace {

// What the operands hold and how a tile multiplies them.
enum class Kind {
  kF32,          // f32 values
  kBf16,         // bf16 pairs, the AVX-512 BF16 dot product
  kBf16Widened,  // bf16 pairs, each half widened to f32 and added by an FMA
};

template <Kind kKind>
using Elem = std::conditional_t<kKind == Kind::kF32, float, bf16x2>;

// A's element (m, k) is A[m * a_rs + k * a_ks] and B's is B[k * ldb + n], k a pair index for bf16.
template <Kind kKind>
struct Operands {
  float* C;
  int64_t ldc;
  const Elem<kKind>* A;
  int64_t a_rs, a_ks;
  const Elem<kKind>* B;
  int64_t ldb, K;
  float alpha, beta;
};

#if defined(__AVX512F__)

// One MR x (NR * 16) tile of C; `last` masks the columns of the last vector. Everything the
// loops touch is a local, and the small loops are unrolled before GCC decides where the
// accumulators live: without the pragmas GCC 12 kept them in registers but also stored all 24
// to the stack on every k step (measured 84 against 212 GFLOP/s on one core).
template <int MR, int NR, Kind kKind>
void tile(const Operands<kKind>& o, __mmask16 last) {
  const Elem<kKind>* const A = o.A;
  const Elem<kKind>* const B = o.B;
  const int64_t a_rs = o.a_rs, a_ks = o.a_ks, ldb = o.ldb, K = o.K;
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const Elem<kKind>* b = B + k * ldb;
    const Elem<kKind>* a = A + k * a_ks;
    if constexpr (kKind == Kind::kF32) {
      __m512 bv[NR];
#pragma GCC unroll 8
      for (int j = 0; j + 1 < NR; ++j) bv[j] = _mm512_loadu_ps(b + 16 * j);
      bv[NR - 1] = _mm512_maskz_loadu_ps(last, b + 16 * (NR - 1));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 av = _mm512_set1_ps(a[m * a_rs]);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) acc[m][j] = _mm512_fmadd_ps(av, bv[j], acc[m][j]);
      }
    } else {
      __m512i bv[NR];
#pragma GCC unroll 8
      for (int j = 0; j + 1 < NR; ++j) bv[j] = _mm512_loadu_si512(b + 16 * j);
      bv[NR - 1] = _mm512_maskz_loadu_epi32(last, b + 16 * (NR - 1));
      if constexpr (kKind == Kind::kBf16) {
#if defined(__AVX512BF16__)
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[m * a_rs]));
#pragma GCC unroll 8
          for (int j = 0; j < NR; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], av, (__m512bh)bv[j]);
        }
#endif
      } else {
        // Widened: the odd element's product first, then the even one's, as the dot product adds.
        __m512 blo[NR], bhi[NR];
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) {
          blo[j] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xFFFF), bv[j], 16));
          bhi[j] = _mm512_castsi512_ps(_mm512_and_si512(bv[j], _mm512_set1_epi32(-65536)));
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          const uint32_t p = a[m * a_rs];
          const __m512 alo = _mm512_set1_ps(std::bit_cast<float>(p << 16));
          const __m512 ahi = _mm512_set1_ps(std::bit_cast<float>(p & 0xFFFF0000u));
#pragma GCC unroll 8
          for (int j = 0; j < NR; ++j) {
            acc[m][j] = _mm512_fmadd_ps(ahi, bhi[j], acc[m][j]);
            acc[m][j] = _mm512_fmadd_ps(alo, blo[j], acc[m][j]);
          }
        }
      }
    }
  }
  float* const C = o.C;
  const int64_t ldc = o.ldc;
  const bool accumulate = o.beta != 0.0f;
  const __m512 alpha = _mm512_set1_ps(o.alpha), beta = _mm512_set1_ps(o.beta);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    float* c = C + m * ldc;
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __mmask16 mask = j + 1 < NR ? __mmask16(0xFFFF) : last;
      __m512 r = _mm512_mul_ps(alpha, acc[m][j]);
      if (accumulate) r = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask, c + 16 * j), r);
      _mm512_mask_storeu_ps(c + 16 * j, mask, r);
    }
  }
}

template <int MR, Kind kKind>
void tile_cols(const Operands<kKind>& o, int nr, __mmask16 last) {
  switch (nr) {
    case 1:
      tile<MR, 1, kKind>(o, last);
      break;
    case 2:
      tile<MR, 2, kKind>(o, last);
      break;
    case 3:
      tile<MR, 3, kKind>(o, last);
      break;
    default:
      tile<MR, 4, kKind>(o, last);
      break;
  }
}

template <Kind kKind>
void tile_any(const Operands<kKind>& o, int mr, int nr, __mmask16 last) {
  switch (mr) {
    case 1:
      tile_cols<1, kKind>(o, nr, last);
      break;
    case 2:
      tile_cols<2, kKind>(o, nr, last);
      break;
    case 3:
      tile_cols<3, kKind>(o, nr, last);
      break;
    case 4:
      tile_cols<4, kKind>(o, nr, last);
      break;
    case 5:
      tile_cols<5, kKind>(o, nr, last);
      break;
    default:
      tile_cols<6, kKind>(o, nr, last);
      break;
  }
}

template <Kind kKind>
void gemm_tiles(const Operands<kKind>& o, int64_t M, int64_t N) {
  // The widened path needs 2 B registers a vector: 4 rows leave room for them.
  constexpr int64_t kRows = kKind == Kind::kBf16Widened ? 4 : 6;
  constexpr int64_t kPanel = 64;
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    const int64_t nn = std::min(kPanel, N - n0);
    const int nr = static_cast<int>((nn + 15) / 16);
    const int rem = static_cast<int>(nn % 16);
    const __mmask16 last = rem ? __mmask16((1u << rem) - 1) : __mmask16(0xFFFF);
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      Operands<kKind> t = o;
      t.C = o.C + m0 * o.ldc + n0;
      t.A = o.A + m0 * o.a_rs;
      t.B = o.B + n0;
      tile_any<kKind>(t, static_cast<int>(std::min(kRows, M - m0)), nr, last);
    }
  }
}

#else  // without AVX-512 at all: the same sums, one element at a time

float low(bf16x2 p) { return std::bit_cast<float>(p << 16); }
float high(bf16x2 p) { return std::bit_cast<float>(p & 0xFFFF0000u); }

template <Kind kKind>
void gemm_tiles(const Operands<kKind>& o, int64_t M, int64_t N) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t k = 0; k < o.K; ++k) {
        const auto a = o.A[m * o.a_rs + k * o.a_ks], b = o.B[k * o.ldb + n];
        if constexpr (kKind == Kind::kF32) {
          acc += a * b;
        } else {
          acc += high(a) * high(b);
          acc += low(a) * low(b);
        }
      }
      float& c = o.C[m * o.ldc + n];
      c = o.alpha * acc + (o.beta != 0.0f ? o.beta * c : 0.0f);
    }
}

#endif  // __AVX512F__

}  // namespace

void gemm_f32_small(float* C, int64_t ldc, const float* A, int64_t a_rs, int64_t a_ks,
                    const float* B, int64_t ldb, int64_t M, int64_t N, int64_t K, float alpha,
                    float beta) {
  if (M <= 0 || N <= 0) return;
  gemm_tiles(Operands<Kind::kF32>{C, ldc, A, a_rs, a_ks, B, ldb, K, alpha, beta}, M, N);
}

void gemm_bf16_pairs(float* C, int64_t ldc, const bf16x2* A, int64_t a_rs, int64_t a_ks,
                     const bf16x2* B, int64_t ldb, int64_t M, int64_t N, int64_t Kp, float alpha,
                     float beta) {
  if (M <= 0 || N <= 0) return;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  if (bf16_native())
    return gemm_tiles(Operands<Kind::kBf16>{C, ldc, A, a_rs, a_ks, B, ldb, Kp, alpha, beta}, M, N);
#endif
  gemm_tiles(Operands<Kind::kBf16Widened>{C, ldc, A, a_rs, a_ks, B, ldb, Kp, alpha, beta}, M, N);
}

}  // namespace moe::cpu
