// The saved activations and backward scratch of Model (model.cpp, model_attention.cpp,
// model_mtp.cpp). Private to src/model. Shapes: N = B*T tokens of the pass (Nk = B*(T-k-1) in
// MTP module k), D hidden, V vocab; GQA Qd = (H + 2*Hkv)*Dh, A = H*Dh; MLA rq, rkv, dn, dr, dv
// (config.h), dqk = dn + dr, Da = max(dqk, dv) the packed head width (kernels/cpu/mla.h).
#pragma once

#include <cstdint>
#include <vector>

#include "model/moe_layer.h"

namespace moe {

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// out = a + b (the residual connection); out may alias a.
inline void add(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// dst[r, 0:cols) = src[r, 0:cols) for r < rows, with row strides (floats) of each side.
inline void copy_cols(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                      int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) dst[r * dst_stride + j] = src[r * src_stride + j];
}

// idx[n] = the first index of the largest of x[n, 0:V).
inline void argmax_rows(int32_t* idx, const float* x, int64_t N, int64_t V) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* r = x + n * V;
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (r[v] > r[best]) best = v;
    idx[n] = int32_t(best);
  }
}

// Saved activations of one transformer block (a main layer or an MTP module's block).
struct LayerActs {
  std::vector<float> ln1, rstd1;  // (N, D), (N)
  std::vector<float> qkv;         // GQA (N, Qd) after RoPE; MLA (N, 3*H*Da) packed, after RoPE
  std::vector<float> att;         // (B, H, T, T) softmax probabilities
  std::vector<float> atto;        // attention output before o_proj: GQA (N, A), MLA (N, H*dv)
  // MLA only: the latent paths' inputs and outputs of their norms
  std::vector<float> qa, qan, rstd_qa;   // (N, rq) q_a_proj out, normed, (N) [q_lora_rank > 0]
  std::vector<float> ckv, kvn, rstd_kv;  // (N, rkv) c_kv, normed, (N)
  std::vector<float> ln2, rstd2;         // (N, D), (N)
  std::vector<float> gu, h;              // dense FFN: (N, 2F), (N, F)
  MoeCache moe;                          // MoE FFN
};

// One MTP module k (its block's activations are Activations::layers[L + k]).
struct MtpActs {
  int64_t T = 0;                         // Tk = T - k - 1 positions per sequence
  std::vector<int32_t> inputs, targets;  // (Nk) t_{i+k+1} (embedded) and t_{i+k+2}
  std::vector<float> e, rstd_e;          // (Nk, D) embeddings, (Nk)
  std::vector<float> hs, rstd_h;         // (Nk, D) previous depth's h (first Tk rows), (Nk)
  std::vector<float> cat;                // (Nk, 2D) [enorm(e) | hnorm(hs)], eh_proj's input
  std::vector<float> res;                // (3, Nk, D) block input, middle, output
  std::vector<float> h, rstd_head;       // (Nk, D) shared_head.norm output, (Nk)
  std::vector<float> logits;             // (Nk, V); dlogits in place after a backward pass
  std::vector<float> losses;             // (Nk)
};

struct Activations {
  int64_t B = 0, T = 0;
  std::vector<float> res;  // (2L+1, N, D): residual stream before each attention / FFN, final
  std::vector<LayerActs> layers;         // L main layers, then the D MTP blocks
  std::vector<MtpActs> mtp;              // D MTP modules
  std::vector<float> lnf, rstdf;         // (N, D), (N)
  std::vector<float> logits;             // (N, V); dlogits in place after backward
  std::vector<float> losses;             // (N)
  std::vector<int32_t> inputs, targets;  // (N)
  std::vector<int32_t> argmax;           // (N) main model's argmax (MTP acceptance)
  // forward scratch: MLA's q (N, H*dqk), kv_a output (N, rkv+dr), kv (N, H*(dn+dv)),
  // attention output (N, H*Da)
  std::vector<float> tmp, mla_q, mla_kva, mla_kv, mla_o;
  // backward scratch; the dense FFN's dh and dgu live in moe_scratch (one layer at a time)
  std::vector<float> dres, dln, datto, dqkv, att_scratch;
  // MLA backward scratch: d of mla_o, q, kv_a output, kv, normed c_kv, c_kv, normed/raw c_q
  std::vector<float> dmla_o, dq, dkva, dkv, dkvn, dckv, dqan, dqa;
  // MTP backward scratch: d of the block output / stream, of cat, of e / hs, carried dh
  std::vector<float> dmtp_res, dcat, dnorm_in, dh_carry, dh_next;
  MoeScratch moe_scratch;
};

}  // namespace moe
