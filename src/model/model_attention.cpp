// The attention of one transformer block, forward and backward: GQA (q|k|v fused, RoPE on every
// head) or MLA (DeepSeek-V2/V3 multi-head latent attention, config.h). Input la.ln1 (N, D),
// output (N, D) after o_proj. Shapes as model_acts.h.
//
// MLA, for one token x (D), heads h (DeepSeek-V3 sec. 2.1; tests/reference/moe_ref.py
// MLAttention is the spec):
//   q   = q_b_proj(RMSNorm_qa(q_a_proj x))  or  q_proj x        (H*dqk) per head [nope | rope]
//   [c_kv | k_pe] = kv_a_proj_with_mqa x                         (rkv | dr), k_pe shared
//   kv  = kv_b_proj(RMSNorm_kva(c_kv))                           (H*(dn+dv)) per head [k_nope | v]
//   RoPE (HF rotate_half, positions 0..T-1) on each head's q rope part and on k_pe
//   o_h = softmax((q_h . [k_nope_h | k_pe]) / sqrt(dqk)) v_h;  out = o_proj [o_0 | ... | o_H-1]
// The attention core is the GQA kernel on zero-padded heads (kernels/cpu/mla.h): exact, but the
// value work is done at width Da = max(dqk, dv) instead of dv. A dedicated MLA attention kernel
// (and the absorbed-weights form for decoding) would be the next step.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/mla.h"
#include "model/model.h"
#include "model/model_acts.h"

namespace moe {

namespace {
struct MlaDims {
  int64_t H, rq, rkv, dn, dr, dv, dqk, Da;
  float q_scale;  // sqrt(Da / dqk): the kernel's 1/sqrt(Da) becomes MLA's 1/sqrt(dqk)
};
MlaDims mla_dims(const ModelConfig& c) {
  MlaDims d;
  d.H = c.num_attention_heads;
  d.rq = c.q_lora_rank;
  d.rkv = c.kv_lora_rank;
  d.dn = c.qk_nope_head_dim;
  d.dr = c.qk_rope_head_dim;
  d.dv = c.v_head_dim;
  d.dqk = d.dn + d.dr;
  d.Da = std::max(d.dqk, d.dv);
  d.q_scale = d.Da == d.dqk ? 1.0f : float(std::sqrt(double(d.Da) / double(d.dqk)));
  return d;
}
}  // namespace

void Model::attention_forward(int64_t l, float* out, int64_t B, int64_t T) {
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, D = c.hidden_size;
  const float* P = params_.data();
  const LayerOffsets& o = layout_.layers[l];
  Activations& a = *acts_;
  LayerActs& la = a.layers[l];
  Gemms& gm = gemms_;
  const float* cs = rope_cos_.data();
  const float* sn = rope_sin_.data();

  if (!c.is_mla()) {
    const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, Dh = c.head_dim;
    const int64_t Qd = c.qkv_dim(), A = H * Dh;
    grow(la.qkv, N * Qd);
    grow(la.att, B * H * T * T);
    grow(la.atto, N * A);
    gm.forward(la.qkv.data(), la.ln1.data(), P + o.qkv, N, D, Qd);
    cpu::rope_apply(la.qkv.data(), cs, sn, B, T, H, Dh, Qd, 0, false);
    cpu::rope_apply(la.qkv.data() + A, cs, sn, B, T, Hkv, Dh, Qd, 0, false);
    gm.attention_forward(la.atto.data(), la.att.data(), la.qkv.data(), B, T, H, Hkv, Dh);
    gm.forward(out, la.atto.data(), P + o.o_proj, N, A, D);
    return;
  }

  const MlaDims m = mla_dims(c);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int64_t Qw = m.H * m.dqk, KVa = m.rkv + m.dr, KVw = m.H * (m.dn + m.dv);
  // q: through the latent c_q (q_lora_rank) or directly
  grow(a.mla_q, N * Qw);
  if (m.rq > 0) {
    grow(la.qa, N * m.rq);
    grow(la.qan, N * m.rq);
    grow(la.rstd_qa, N);
    gm.forward(la.qa.data(), la.ln1.data(), P + o.q_a, N, D, m.rq);
    cpu::rmsnorm_forward(la.qan.data(), la.rstd_qa.data(), la.qa.data(), P + o.q_a_norm, N, m.rq,
                         eps);
    gm.forward(a.mla_q.data(), la.qan.data(), P + o.q_b, N, m.rq, Qw);
  } else {
    gm.forward(a.mla_q.data(), la.ln1.data(), P + o.q_proj, N, D, Qw);
  }
  // kv: [c_kv | k_pe] = kv_a_proj_with_mqa(x); kv = kv_b_proj(RMSNorm(c_kv))
  grow(a.mla_kva, N * KVa);
  grow(la.ckv, N * m.rkv);
  grow(la.kvn, N * m.rkv);
  grow(la.rstd_kv, N);
  grow(a.mla_kv, N * KVw);
  gm.forward(a.mla_kva.data(), la.ln1.data(), P + o.kv_a, N, D, KVa);
  copy_cols(la.ckv.data(), m.rkv, a.mla_kva.data(), KVa, N, m.rkv);
  cpu::rmsnorm_forward(la.kvn.data(), la.rstd_kv.data(), la.ckv.data(), P + o.kv_a_norm, N, m.rkv,
                       eps);
  gm.forward(a.mla_kv.data(), la.kvn.data(), P + o.kv_b, N, m.rkv, KVw);
  // RoPE on each head's q rope part and on the shared k_pe (the rope tables are dr wide)
  for (int64_t h = 0; h < m.H; ++h)
    cpu::rope_apply(a.mla_q.data() + h * m.dqk + m.dn, cs, sn, B, T, 1, m.dr, Qw, 0, false);
  cpu::rope_apply(a.mla_kva.data() + m.rkv, cs, sn, B, T, 1, m.dr, KVa, 0, false);
  // attention over heads packed for the GQA kernel, then o_proj of the dv-wide outputs
  grow(la.qkv, N * 3 * m.H * m.Da);
  grow(la.att, B * m.H * T * T);
  grow(a.mla_o, N * m.H * m.Da);
  grow(la.atto, N * m.H * m.dv);
  cpu::mla_pack_qkv(la.qkv.data(), a.mla_q.data(), a.mla_kv.data(), a.mla_kva.data() + m.rkv, KVa,
                    N, m.H, m.dn, m.dr, m.dv, m.Da, m.q_scale);
  gm.attention_forward(a.mla_o.data(), la.att.data(), la.qkv.data(), B, T, m.H, m.H, m.Da);
  cpu::heads_copy(la.atto.data(), a.mla_o.data(), N, m.H, m.dv, m.Da, m.dv);
  gm.forward(out, la.atto.data(), P + o.o_proj, N, m.H * m.dv, D);
}

void Model::attention_backward(int64_t l, float* dln, const float* dout, int64_t B, int64_t T) {
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, D = c.hidden_size;
  const float* P = params_.data();
  float* G = grads_.data();
  const LayerOffsets& o = layout_.layers[l];
  Activations& a = *acts_;
  LayerActs& la = a.layers[l];
  Gemms& gm = gemms_;
  const float* cs = rope_cos_.data();
  const float* sn = rope_sin_.data();

  if (!c.is_mla()) {
    const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, Dh = c.head_dim;
    const int64_t Qd = c.qkv_dim(), A = H * Dh;
    grow(a.datto, N * A);
    grow(a.dqkv, N * Qd);
    grow(a.att_scratch, cpu::attention_backward_scratch(T, Dh, omp_get_max_threads()));
    gm.backward(a.datto.data(), G + o.o_proj, dout, la.atto.data(), P + o.o_proj, N, A, D, false);
    gm.attention_backward(a.dqkv.data(), a.datto.data(), la.qkv.data(), la.att.data(),
                          a.att_scratch.data(), B, T, H, Hkv, Dh);
    cpu::rope_apply(a.dqkv.data(), cs, sn, B, T, H, Dh, Qd, 0, true);
    cpu::rope_apply(a.dqkv.data() + A, cs, sn, B, T, Hkv, Dh, Qd, 0, true);
    gm.backward(dln, G + o.qkv, a.dqkv.data(), la.ln1.data(), P + o.qkv, N, D, Qd, false);
    return;
  }

  const MlaDims m = mla_dims(c);
  const int64_t Qw = m.H * m.dqk, KVa = m.rkv + m.dr, KVw = m.H * (m.dn + m.dv);
  grow(a.datto, N * m.H * m.dv);
  grow(a.dmla_o, N * m.H * m.Da);
  grow(a.dqkv, N * 3 * m.H * m.Da);
  grow(a.att_scratch, cpu::attention_backward_scratch(T, m.Da, omp_get_max_threads()));
  grow(a.dq, N * Qw);
  grow(a.dkv, N * KVw);
  grow(a.dkva, N * KVa);
  grow(a.dkvn, N * m.rkv);
  grow(a.dckv, N * m.rkv);

  // o_proj, then the attention core at width Da (padded output columns get zero gradient)
  gm.backward(a.datto.data(), G + o.o_proj, dout, la.atto.data(), P + o.o_proj, N, m.H * m.dv, D,
              false);
  cpu::heads_copy(a.dmla_o.data(), a.datto.data(), N, m.H, m.Da, m.dv, m.dv);
  gm.attention_backward(a.dqkv.data(), a.dmla_o.data(), la.qkv.data(), la.att.data(),
                        a.att_scratch.data(), B, T, m.H, m.H, m.Da);
  // d q, d kv, and d k_pe summed over the heads that share it (into dkva's k_pe columns)
  cpu::mla_unpack_qkv_grad(a.dq.data(), a.dkv.data(), a.dkva.data() + m.rkv, KVa, a.dqkv.data(), N,
                           m.H, m.dn, m.dr, m.dv, m.Da, m.q_scale);
  for (int64_t h = 0; h < m.H; ++h)
    cpu::rope_apply(a.dq.data() + h * m.dqk + m.dn, cs, sn, B, T, 1, m.dr, Qw, 0, true);
  cpu::rope_apply(a.dkva.data() + m.rkv, cs, sn, B, T, 1, m.dr, KVa, 0, true);
  // kv path: kv_b_proj, the latent norm, then kv_a_proj_with_mqa on [d c_kv | d k_pe]
  gm.backward(a.dkvn.data(), G + o.kv_b, a.dkv.data(), la.kvn.data(), P + o.kv_b, N, m.rkv, KVw,
              false);
  std::fill(a.dckv.begin(), a.dckv.begin() + N * m.rkv, 0.0f);
  cpu::rmsnorm_backward(a.dckv.data(), G + o.kv_a_norm, a.dkvn.data(), la.ckv.data(),
                        P + o.kv_a_norm, la.rstd_kv.data(), N, m.rkv);
  copy_cols(a.dkva.data(), KVa, a.dckv.data(), m.rkv, N, m.rkv);
  gm.backward(dln, G + o.kv_a, a.dkva.data(), la.ln1.data(), P + o.kv_a, N, D, KVa, false);
  // q path, added into dln
  if (m.rq > 0) {
    grow(a.dqan, N * m.rq);
    grow(a.dqa, N * m.rq);
    gm.backward(a.dqan.data(), G + o.q_b, a.dq.data(), la.qan.data(), P + o.q_b, N, m.rq, Qw,
                false);
    std::fill(a.dqa.begin(), a.dqa.begin() + N * m.rq, 0.0f);
    cpu::rmsnorm_backward(a.dqa.data(), G + o.q_a_norm, a.dqan.data(), la.qa.data(), P + o.q_a_norm,
                          la.rstd_qa.data(), N, m.rq);
    gm.backward(dln, G + o.q_a, a.dqa.data(), la.ln1.data(), P + o.q_a, N, D, m.rq, true);
  } else {
    gm.backward(dln, G + o.q_proj, a.dq.data(), la.ln1.data(), P + o.q_proj, N, D, Qw, true);
  }
}

}  // namespace moe
