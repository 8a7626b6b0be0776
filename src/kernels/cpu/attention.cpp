// Causal GQA attention, forward and backward, with the softmax probabilities saved; f32 products
// or bf16 ones (attention_*_bf16, the bf16 and FP8 compute dtypes).
//
// One (batch, head) pair is one task; threads take tasks, and each task works on row blocks of
// kBlock queries: block [i0, i1) only sees keys [0, i1), so the masked upper triangle is skipped
// except inside the diagonal block. The softmax is fused between the two products while the
// block's scores are still in cache.
//
// Backward per task and row block, with P the saved probabilities and the block's dS in the
// thread's scratch (so P and dS are used while in cache):
//   dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = s dS K, dK += s dS^T Q, dV += P^T dO.
// Query heads of one GQA group add into the same dK/dV, so backward tasks are (batch, kv head)
// pairs and loop over the group's query heads in order: no atomics, deterministic.
//
// The six products go through a policy over the same blocking, softmax and dS code: F32Tiles
// (fp32) or Bf16Products (the bf16 and FP8 compute dtypes). Both run register-tiled kernels of
// bf16_pairs.h on operands laid out once per task (K^T, V^T, and K and V with their rows
// contiguous) or per block (the block's Q and dO rows): a library call per block costs more than
// these small products (measured: perf put 62% of the fp32 attention's time in oneDNN's sgemm,
// running there at about half a core's FMA peak against 80-90% on the same shapes in isolation;
// its bf16 matmul primitives per block were slower still; the tiles run at 90-95% of the peak
// on operands in cache). F32Tiles reads every B operand with rows of Dh floats, and the backward
// sums dK and dV per task in (T, Dh) buffers before writing them out: read or summed in place,
// rows a qkv row apart (6 KB in bench-moe) fall into a few L1 sets.
#include <omp.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/bf16_pairs.h"
#include "kernels/cpu/exp_fast.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/onednn.h"  // thread_buffer

namespace moe::cpu {
namespace {

constexpr int64_t kBlock = 64;  // query rows per block

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

// Shapes and strides of one task: k and v are (T, Dh) with row stride C; a block's queries,
// dO and P rows have their own strides, passed per call.
struct Head {
  int64_t T, Dh, C;
};

// dst (rows, Dh) with rows of Dh = src (rows, Dh) with row stride ld.
void copy_rows(float* dst, const float* src, int64_t rows, int64_t Dh, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * Dh, src + r * ld, sizeof(float) * size_t(Dh));
}

// dst (rows, Dh) with row stride ld = src (rows, Dh) with rows of Dh.
void copy_rows_to(float* dst, int64_t ld, const float* src, int64_t rows, int64_t Dh) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * ld, src + r * Dh, sizeof(float) * size_t(Dh));
}

// ---- f32 products ---------------------------------------------------------------------------

// Per task: K^T [Dh, T] and V (T, Dh) in the forward; V^T (in the caller's scratch) and K (T, Dh)
// in the backward. Per block: Q's and dO's rows (n, Dh), dO's copied
// by dprobs and read again by grads of the same block.
class F32Tiles {
 public:
  void begin_forward(const Head& h, const float* k, const float* v) {
    kt_ = thread_buffer<float, 10>(size_t(h.Dh * h.T));
    vc_ = thread_buffer<float, 11>(size_t(h.Dh * h.T));
    qb_ = thread_buffer<float, 12>(size_t(h.Dh * kBlock));
    float* kc = thread_buffer<float, 13>(size_t(h.Dh * h.T));
    copy_rows(kc, k, h.T, h.Dh, h.C);  // whole rows first: the transpose then reads from cache
    transpose_head(kt_, kc, h.T, h.Dh, h.Dh);
    copy_rows(vc_, v, h.T, h.Dh, h.C);
  }
  void scores(const Head& h, float* s, const float* q, int64_t ldq, int64_t n, int64_t i1,
              float scale) {
    copy_rows(qb_, q, n, h.Dh, ldq);
    gemm_f32_small(s, h.T, qb_, h.Dh, 1, kt_, h.T, n, i1, h.Dh, scale, 0.0f);
  }
  void values(const Head& h, float* o, int64_t ldo, const float* p, const float* /*v*/, int64_t n,
              int64_t i1) {
    gemm_f32_small(o, ldo, p, h.T, 1, vc_, h.Dh, n, h.Dh, i1, 1.0f, 0.0f);
  }
  void begin_backward(const Head& h, const float* k, const float* v, float* vt) {
    vt_ = vt;
    kc_ = thread_buffer<float, 11>(size_t(h.Dh * h.T));
    copy_rows(kc_, v, h.T, h.Dh, h.C);  // V's rows, then V^T from cache
    transpose_head(vt_, kc_, h.T, h.Dh, h.Dh);
    copy_rows(kc_, k, h.T, h.Dh, h.C);
    qb_ = thread_buffer<float, 12>(size_t(h.Dh * kBlock));
    ob_ = thread_buffer<float, 15>(size_t(h.Dh * kBlock));
  }
  void dprobs(const Head& h, float* dp, const float* dob, int64_t lddo, int64_t n, int64_t i1) {
    copy_rows(ob_, dob, n, h.Dh, lddo);
    gemm_f32_small(dp, h.T, ob_, h.Dh, 1, vt_, h.T, n, i1, h.Dh, 1.0f, 0.0f);
  }
  void grads(const Head& h, float* dq, float* dk, float* dv, const float* ds, const float* p,
             const float* q, const float* /*k*/, const float* /*dob*/, int64_t /*lddo*/,
             int64_t n, int64_t i1, float scale) {
    copy_rows(qb_, q, n, h.Dh, h.C);
    gemm_f32_small(dq, h.C, ds, h.T, 1, kc_, h.Dh, n, h.Dh, i1, scale, 0.0f);
    gemm_f32_small(dk, h.Dh, ds, 1, h.T, qb_, h.Dh, i1, h.Dh, n, scale, 1.0f);
    gemm_f32_small(dv, h.Dh, p, 1, h.T, ob_, h.Dh, i1, h.Dh, n, 1.0f, 1.0f);
  }

 private:
  float *kt_ = nullptr, *vc_ = nullptr, *qb_ = nullptr, *vt_ = nullptr, *kc_ = nullptr;
  float* ob_ = nullptr;
};

// ---- bf16 products ------------------------------------------------------------------------
// Pairs along the reduced dimension (bf16_pairs.h). Per task: K as [Dh/2][T] pairs over d (B of
// Q K^T) and V as [T/2][Dh] pairs over keys (B of P V); backward: V as [Dh/2][T] (B of dO V^T)
// and K as [T/2][Dh] (B of dS K). Per block, each operand is packed once, right after it is
// produced or read.
class Bf16Products {
 public:
  void begin_forward(const Head& h, const float* k, const float* v) {
    const int64_t dh2 = (h.Dh + 1) / 2, t2 = (h.T + 1) / 2;
    kt_ = thread_buffer<bf16x2, 10>(size_t(dh2 * h.T));
    vp_ = thread_buffer<bf16x2, 11>(size_t(t2 * h.Dh));
    a_ = thread_buffer<bf16x2, 12>(size_t(kBlock * (dh2 > t2 ? dh2 : t2)));
    pack_pairs_in_rows_t(kt_, h.T, k, h.C, h.T, h.Dh);
    pack_pairs_in_cols(vp_, h.Dh, v, h.C, h.T, h.Dh);
  }
  void scores(const Head& h, float* s, const float* q, int64_t ldq, int64_t n, int64_t i1,
              float scale) {
    const int64_t dh2 = (h.Dh + 1) / 2;
    pack_pairs_in_rows(a_, dh2, q, ldq, n, h.Dh);
    gemm_bf16_pairs(s, h.T, a_, dh2, 1, kt_, h.T, n, i1, dh2, scale, 0.0f);
  }
  void values(const Head& h, float* o, int64_t ldo, const float* p, const float* /*v*/, int64_t n,
              int64_t i1) {
    const int64_t i2 = (i1 + 1) / 2;
    pack_pairs_in_rows(a_, i2, p, h.T, n, i1);
    gemm_bf16_pairs(o, ldo, a_, i2, 1, vp_, h.Dh, n, h.Dh, i2, 1.0f, 0.0f);
  }

  void begin_backward(const Head& h, const float* k, const float* v, float* /*vt*/) {
    const int64_t dh2 = (h.Dh + 1) / 2, t2 = (h.T + 1) / 2, n2 = (kBlock + 1) / 2;
    vt_ = thread_buffer<bf16x2, 13>(size_t(dh2 * h.T));
    kp_ = thread_buffer<bf16x2, 14>(size_t(t2 * h.Dh));
    a_ = thread_buffer<bf16x2, 12>(size_t(kBlock * (dh2 > t2 ? dh2 : t2)));
    at_ = thread_buffer<bf16x2, 15>(size_t(n2 * h.T));
    b_ = thread_buffer<bf16x2, 16>(size_t(n2 * h.Dh));
    pack_pairs_in_rows_t(vt_, h.T, v, h.C, h.T, h.Dh);
    pack_pairs_in_cols(kp_, h.Dh, k, h.C, h.T, h.Dh);
  }
  void dprobs(const Head& h, float* dp, const float* dob, int64_t lddo, int64_t n, int64_t i1) {
    const int64_t dh2 = (h.Dh + 1) / 2;
    pack_pairs_in_rows(a_, dh2, dob, lddo, n, h.Dh);
    gemm_bf16_pairs(dp, h.T, a_, dh2, 1, vt_, h.T, n, i1, dh2, 1.0f, 0.0f);
  }
  void grads(const Head& h, float* dq, float* dk, float* dv, const float* ds, const float* p,
             const float* q, const float* /*k*/, const float* dob, int64_t lddo, int64_t n,
             int64_t i1, float scale) {
    const int64_t i2 = (i1 + 1) / 2, n2 = (n + 1) / 2;
    pack_pairs_in_rows(a_, i2, ds, h.T, n, i1);  // dS, pairs over keys
    gemm_bf16_pairs(dq, h.C, a_, i2, 1, kp_, h.Dh, n, h.Dh, i2, scale, 0.0f);
    pack_pairs_in_cols(at_, i1, ds, h.T, n, i1);  // dS^T, pairs over queries
    pack_pairs_in_cols(b_, h.Dh, q, h.C, n, h.Dh);
    gemm_bf16_pairs(dk, h.Dh, at_, 1, i1, b_, h.Dh, i1, h.Dh, n2, scale, 1.0f);
    pack_pairs_in_cols(at_, i1, p, h.T, n, i1);  // P^T
    pack_pairs_in_cols(b_, h.Dh, dob, lddo, n, h.Dh);
    gemm_bf16_pairs(dv, h.Dh, at_, 1, i1, b_, h.Dh, i1, h.Dh, n2, 1.0f, 1.0f);
  }


 private:
  bf16x2 *kt_ = nullptr, *vp_ = nullptr, *vt_ = nullptr, *kp_ = nullptr;
  bf16x2 *a_ = nullptr, *at_ = nullptr, *b_ = nullptr;
};

template <class Products>
void forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
             int64_t Dh) {
  check_sizes("attention_forward", B, T, H, Hkv, Dh);
  const int64_t C = (H + 2 * Hkv) * Dh;  // qkv row length
  const int64_t HD = H * Dh;             // out row length
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(float(Dh));
  const Head hd{T, Dh, C};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H, kvh = h / group;
    const float* q = qkv + b * T * C + h * Dh;                // (T, Dh), stride C
    const float* k = qkv + b * T * C + (H + kvh) * Dh;        // (T, Dh), stride C
    const float* v = qkv + b * T * C + (H + Hkv + kvh) * Dh;  // (T, Dh), stride C
    float* a = att + bh * T * T;                              // (T, T)
    float* o = out + b * T * HD + h * Dh;                     // (T, Dh), stride HD
    Products prod;
    prod.begin_forward(hd, k, v);
    for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
      const int64_t i1 = i0 + kBlock < T ? i0 + kBlock : T, n = i1 - i0;
      float* s = a + i0 * T;  // (n, T): scores, then probabilities
      prod.scores(hd, s, q + i0 * C, C, n, i1, scale);
      for (int64_t r = 0; r < n; ++r) softmax_row(s + r * T, i0 + r + 1, T);
      prod.values(hd, o + i0 * HD, HD, s, v, n, i1);
    }
  }
}

template <class Products>
void backward(float* dqkv, const float* dout, const float* qkv, const float* att, float* scratch,
              int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh) {
  check_sizes("attention_backward", B, T, H, Hkv, Dh);
  MOE_CHECK(scratch != nullptr || B * T == 0, "attention_backward",
            "scratch is null; pass attention_backward_scratch(T, Dh, omp_get_max_threads()) "
            "floats");
  const int64_t C = (H + 2 * Hkv) * Dh;
  const int64_t HD = H * Dh;
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(float(Dh));
  const Head hd{T, Dh, C};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bg = 0; bg < B * Hkv; ++bg) {
    const int64_t b = bg / Hkv, kvh = bg % Hkv;
    float* ds = scratch + size_t(omp_get_thread_num()) * size_t(T) * size_t(kBlock + Dh);
    const float* k = qkv + b * T * C + (H + kvh) * Dh;        // (T, Dh), stride C
    const float* v = qkv + b * T * C + (H + Hkv + kvh) * Dh;  // (T, Dh), stride C
    // dK, dV sum over row blocks and query heads in (T, Dh) buffers, written out at the end.
    float* dk = thread_buffer<float, 16>(size_t(T * Dh));
    float* dv = thread_buffer<float, 17>(size_t(T * Dh));
    std::memset(dk, 0, sizeof(float) * size_t(T * Dh));
    std::memset(dv, 0, sizeof(float) * size_t(T * Dh));
    Products prod;
    prod.begin_backward(hd, k, v, ds + kBlock * T);  // [Dh, T] after the block's dS
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const float* q = qkv + b * T * C + h * Dh;
      float* dq = dqkv + b * T * C + h * Dh;
      const float* p = att + (b * H + h) * T * T;        // (T, T)
      const float* dout_h = dout + b * T * HD + h * Dh;  // (T, Dh), stride HD
      for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
        const int64_t i1 = i0 + kBlock < T ? i0 + kBlock : T, n = i1 - i0;
        const float* pb = p + i0 * T;         // (n, T), zero past the diagonal
        const float* dob = dout_h + i0 * HD;  // (n, Dh), stride HD
        prod.dprobs(hd, ds, dob, HD, n, i1);  // dP (n, i1)
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
        prod.grads(hd, dq + i0 * C, dk, dv, ds, pb, q + i0 * C, k, dob, HD, n, i1, scale);
      }
    }
    float* dk_out = dqkv + b * T * C + (H + kvh) * Dh;
    float* dv_out = dqkv + b * T * C + (H + Hkv + kvh) * Dh;
    copy_rows_to(dk_out, C, dk, T, Dh);
    copy_rows_to(dv_out, C, dv, T, Dh);
  }
}

}  // namespace

void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t Dh) {
  const prof::Scope prof_scope(prof::Part::kAttention);
  forward<F32Tiles>(out, att, qkv, B, T, H, Hkv, Dh);
}
void attention_forward_bf16(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                            int64_t H, int64_t Hkv, int64_t Dh) {
  const prof::Scope prof_scope(prof::Part::kAttention);
  forward<Bf16Products>(out, att, qkv, B, T, H, Hkv, Dh);
}

// Per thread: one row block of dS (kBlock, T) and V^T [Dh, T].
size_t attention_backward_scratch(int64_t T, int64_t Dh, int nthreads) {
  return size_t(nthreads > 0 ? nthreads : 1) * size_t(T) * size_t(kBlock + Dh);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh) {
  const prof::Scope prof_scope(prof::Part::kAttention);
  backward<F32Tiles>(dqkv, dout, qkv, att, scratch, B, T, H, Hkv, Dh);
}
void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* att,
                             float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                             int64_t Dh) {
  const prof::Scope prof_scope(prof::Part::kAttention);
  backward<Bf16Products>(dqkv, dout, qkv, att, scratch, B, T, H, Hkv, Dh);
}

}  // namespace moe::cpu
