// Causal GQA attention, forward and backward, with the softmax probabilities saved.
//
// One (batch, head) pair is one task; threads take tasks, and each task runs single-threaded
// oneDNN sgemm calls (oneDNN does not nest inside our parallel region) on row blocks of
// kBlock queries: block [i0, i1) only sees keys [0, i1), so the masked upper triangle is
// skipped except inside the diagonal block. The softmax is fused between the two products
// while the block's scores are still in cache. Q K^T and dO V^T run about 20% faster with K
// (V) transposed to a contiguous [Dh, T] copy, made once per task.
//
// Backward per task and row block, with P the saved probabilities and the block's dS in the
// thread's scratch (so P and dS are used while in cache):
//   dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = s dS K, dK += s dS^T Q, dV += P^T dO.
// Query heads of one GQA group add into the same dK/dV, so backward tasks are (batch, kv head)
// pairs and loop over the group's query heads in order: no atomics, deterministic.
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu/exp_fast.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {

constexpr int64_t kBlock = 64;  // query rows per block
// Forward has no scratch argument: K^T goes on the stack when Dh*T fits in 256 KB, and
// Q K^T reads K in place (slower) otherwise.
constexpr int64_t kMaxStackKt = 65536;

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C (oneDNN's dnnl_sgemm is row-major).
void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// In place on row p[0..n): p = softmax(p), the row's valid length is n; p[n..len) = 0.
void softmax_row(float* p, int64_t n, int64_t len) {
  float mx = p[0];
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = p[j] > mx ? p[j] : mx;
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    p[j] = exp_fast(p[j] - mx);
    sum += p[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] *= inv;
  if (len > n) std::memset(p + n, 0, sizeof(float) * size_t(len - n));
}

// dst [Dh, T] (ld T) = src^T for src (T, Dh) with row stride ld_src.
void transpose_head(float* dst, const float* src, int64_t T, int64_t Dh, int64_t ld_src) {
  constexpr int64_t kTile = 16;  // tiles keep both sides' lines in L1
  for (int64_t t0 = 0; t0 < T; t0 += kTile)
    for (int64_t d0 = 0; d0 < Dh; d0 += kTile)
      for (int64_t t = t0; t < t0 + kTile && t < T; ++t)
        for (int64_t d = d0; d < d0 + kTile && d < Dh; ++d) dst[d * T + t] = src[t * ld_src + d];
}

void check_sizes(const char* op, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh) {
  MOE_CHECK(B >= 0 && T >= 0 && H > 0 && Hkv > 0 && Dh > 0, op,
            "need B, T >= 0 and H, Hkv, Dh > 0, got B=", B, " T=", T, " H=", H, " Hkv=", Hkv,
            " Dh=", Dh);
  MOE_CHECK(H % Hkv == 0, op, "H=", H, " must be a multiple of Hkv=", Hkv);
}

}  // namespace

void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t Dh) {
  check_sizes("attention_forward", B, T, H, Hkv, Dh);
  const int64_t C = (H + 2 * Hkv) * Dh;  // qkv row length
  const int64_t HD = H * Dh;             // out row length
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(float(Dh));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H, kvh = h / group;
    const float* q = qkv + b * T * C + h * Dh;                // (T, Dh), stride C
    const float* k = qkv + b * T * C + (H + kvh) * Dh;        // (T, Dh), stride C
    const float* v = qkv + b * T * C + (H + Hkv + kvh) * Dh;  // (T, Dh), stride C
    float* a = att + bh * T * T;                              // (T, T)
    float* o = out + b * T * HD + h * Dh;                     // (T, Dh), stride HD
    alignas(64) float kt_buf[kMaxStackKt];                    // [Dh, T] if it fits
    const bool use_kt = Dh * T <= kMaxStackKt;
    if (use_kt) transpose_head(kt_buf, k, T, Dh, C);
    for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
      const int64_t i1 = i0 + kBlock < T ? i0 + kBlock : T, n = i1 - i0;
      float* s = a + i0 * T;  // (n, T): scores, then probabilities
      if (use_kt)
        sgemm(false, false, n, i1, Dh, scale, q + i0 * C, C, kt_buf, T, 0.0f, s, T);
      else
        sgemm(false, true, n, i1, Dh, scale, q + i0 * C, C, k, C, 0.0f, s, T);
      for (int64_t r = 0; r < n; ++r) softmax_row(s + r * T, i0 + r + 1, T);
      sgemm(false, false, n, Dh, i1, 1.0f, s, T, v, C, 0.0f, o + i0 * HD, HD);
    }
  }
}

// Per thread: one row block of dS (kBlock, T) and V^T [Dh, T].
size_t attention_backward_scratch(int64_t T, int64_t Dh, int nthreads) {
  return size_t(nthreads > 0 ? nthreads : 1) * size_t(T) * size_t(kBlock + Dh);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh) {
  check_sizes("attention_backward", B, T, H, Hkv, Dh);
  MOE_CHECK(scratch != nullptr || B * T == 0, "attention_backward",
            "scratch is null; pass attention_backward_scratch(T, Dh, omp_get_max_threads()) "
            "floats");
  const int64_t C = (H + 2 * Hkv) * Dh;
  const int64_t HD = H * Dh;
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(float(Dh));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bg = 0; bg < B * Hkv; ++bg) {
    const int64_t b = bg / Hkv, kvh = bg % Hkv;
    float* ds = scratch + size_t(omp_get_thread_num()) * size_t(T) * size_t(kBlock + Dh);
    float* vt = ds + kBlock * T;                              // [Dh, T]
    const float* k = qkv + b * T * C + (H + kvh) * Dh;        // (T, Dh), stride C
    const float* v = qkv + b * T * C + (H + Hkv + kvh) * Dh;  // (T, Dh), stride C
    float* dk = dqkv + b * T * C + (H + kvh) * Dh;
    float* dv = dqkv + b * T * C + (H + Hkv + kvh) * Dh;
    for (int64_t t = 0; t < T; ++t) {  // dK, dV accumulate over row blocks and query heads
      std::memset(dk + t * C, 0, sizeof(float) * size_t(Dh));
      std::memset(dv + t * C, 0, sizeof(float) * size_t(Dh));
    }
    transpose_head(vt, v, T, Dh, C);
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const float* q = qkv + b * T * C + h * Dh;
      float* dq = dqkv + b * T * C + h * Dh;
      const float* p = att + (b * H + h) * T * T;        // (T, T)
      const float* dout_h = dout + b * T * HD + h * Dh;  // (T, Dh), stride HD
      for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
        const int64_t i1 = i0 + kBlock < T ? i0 + kBlock : T, n = i1 - i0;
        const float* pb = p + i0 * T;           // (n, T), zero past the diagonal
        const float* dob = dout_h + i0 * HD;    // (n, Dh), stride HD
        sgemm(false, false, n, i1, Dh, 1.0f, dob, HD, vt, T, 0.0f, ds, T);  // dP (n, i1)
        for (int64_t r = 0; r < n; ++r) {
          float* d = ds + r * T;
          const float* pr = pb + r * T;
          float rowdot = 0;
#pragma omp simd reduction(+ : rowdot)
          for (int64_t j = 0; j < i1; ++j) rowdot += pr[j] * d[j];
#pragma omp simd
          for (int64_t j = 0; j < i1; ++j) d[j] = pr[j] * (d[j] - rowdot);  // dS, 0 past i
        }
        // The block's queries see keys [0, i1): dQ rows [i0, i1), dK and dV rows [0, i1).
        sgemm(false, false, n, Dh, i1, scale, ds, T, k, C, 0.0f, dq + i0 * C, C);
        sgemm(true, false, i1, Dh, n, scale, ds, T, q + i0 * C, C, 1.0f, dk, C);
        sgemm(true, false, i1, Dh, n, 1.0f, pb, T, dob, HD, 1.0f, dv, C);
      }
    }
  }
}

}  // namespace moe::cpu
