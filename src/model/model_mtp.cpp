// Multi-token prediction (DeepSeek-V3 sec. 2.2; tests/reference/moe_ref.py MoeForCausalLM is the
// spec). With M = num_nextn_predict_layers modules k = 0..M-1 over inputs t_0..t_{T-1}:
//   h_0 = RMSNorm_final(x_L)                       (the main model's normed output, lnf)
//   module k, positions i = 0..Tk-1 with Tk = T-k-1 (those whose target t_{i+k+2} exists):
//     x0 = eh_proj [enorm(emb(t_{i+k+1})) | hnorm(h_k(i))]         (2D -> D)
//     h_{k+1} = shared_head.norm(Block_{L+k}(x0))    causal over the Tk positions, RoPE 0..Tk-1
//     logits_k = h_{k+1} @ lm_head^T, CE_k = mean over the B*Tk positions of -log p(t_{i+k+2})
//   loss += mtp_loss_weight / M * sum_k CE_k   (each MTP block's MoE terms are added unweighted)
// The embedding and lm_head are the main model's. Shapes: Nk = B*Tk, D hidden, V vocab.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/kernels.h"
#include "model/model.h"
#include "model/model_acts.h"

namespace moe {

void Model::mtp_forward(int64_t k, const int32_t* tokens, int64_t B, int64_t T, bool backward,
                        float grad_scale, LossStats& st, TokenDispatcher& disp) {
  const ModelConfig& c = cfg_;
  const int64_t L = c.num_hidden_layers, M = c.num_nextn_predict_layers;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const int64_t Tk = T - k - 1, Nk = B * Tk, Tprev = T - k;  // h_k has Tprev positions
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float* P = params_.data();
  const MtpOffsets& mo = layout_.mtp[k];
  Activations& a = *acts_;
  MtpActs& m = a.mtp[k];
  Gemms& gm = gemms_;
  m.T = Tk;

  grow(m.inputs, Nk);
  grow(m.targets, Nk);
  grow(m.e, Nk * D);
  grow(m.rstd_e, Nk);
  grow(m.hs, Nk * D);
  grow(m.rstd_h, Nk);
  grow(m.cat, Nk * 2 * D);
  grow(m.res, 3 * Nk * D);
  grow(m.h, Nk * D);
  grow(m.rstd_head, Nk);
  grow(m.logits, Nk * V);
  grow(m.losses, Nk);
  grow(a.tmp, Nk * D);
  // (B, T+1) tokens were range-checked by run(); module k embeds t_{i+k+1}, predicts t_{i+k+2}
  const float* hprev = k == 0 ? a.lnf.data() : a.mtp[k - 1].h.data();  // (B, Tprev, D)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tk; ++t) {
      m.inputs[b * Tk + t] = tokens[b * (T + 1) + k + 1 + t];
      m.targets[b * Tk + t] = tokens[b * (T + 1) + k + 2 + t];
    }
    std::copy(hprev + b * Tprev * D, hprev + (b * Tprev + Tk) * D, m.hs.data() + b * Tk * D);
  }
  float* x0 = m.res.data();
  float* xm = x0 + Nk * D;
  float* xo = xm + Nk * D;

  cpu::embedding_forward(m.e.data(), m.inputs.data(), P + layout_.embed, Nk, D);
  cpu::rmsnorm_forward(a.tmp.data(), m.rstd_e.data(), m.e.data(), P + mo.enorm, Nk, D, eps);
  copy_cols(m.cat.data(), 2 * D, a.tmp.data(), D, Nk, D);
  cpu::rmsnorm_forward(a.tmp.data(), m.rstd_h.data(), m.hs.data(), P + mo.hnorm, Nk, D, eps);
  copy_cols(m.cat.data() + D, 2 * D, a.tmp.data(), D, Nk, D);
  gm.forward(x0, m.cat.data(), P + mo.eh_proj, Nk, 2 * D, D);
  block_forward(L + k, x0, xm, xo, B, Tk, st, disp);
  cpu::rmsnorm_forward(m.h.data(), m.rstd_head.data(), xo, P + mo.head_norm, Nk, D, eps);
  gm.forward(m.logits.data(), m.h.data(), P + layout_.lm_head, Nk, D, V);

  if (k == 0) {  // the next-next token: against the truth and against the main model's argmax
    std::vector<int32_t> pred(static_cast<size_t>(Nk));
    argmax_rows(pred.data(), m.logits.data(), Nk, V);
    int64_t hits = 0, agree = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tk; ++t) {
        const int32_t p = pred[size_t(b * Tk + t)];
        hits += p == m.targets[b * Tk + t];
        agree += p == a.argmax[b * T + t + 1];
      }
    st.mtp_positions = Nk;
    st.mtp_hits = hits;
    st.mtp_agree = agree;
  }

  const double wk = c.mtp_loss_weight / static_cast<double>(M);
  const double ce_sum =
      backward
          ? cpu::cross_entropy_forward_backward(
                m.logits.data(), m.losses.data(), m.logits.data(), m.targets.data(), Nk, V,
                static_cast<float>(double(grad_scale) * wk / static_cast<double>(Nk)))
          : cpu::cross_entropy_forward(m.losses.data(), m.logits.data(), m.targets.data(), Nk, V);
  st.mtp_ce[size_t(k)] = ce_sum / static_cast<double>(Nk);
  st.mtp += wk * st.mtp_ce[size_t(k)];
}

void Model::mtp_backward(int64_t k, int64_t B, int64_t T, float grad_scale, TokenDispatcher& disp) {
  const ModelConfig& c = cfg_;
  const int64_t L = c.num_hidden_layers, M = c.num_nextn_predict_layers;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const int64_t Tk = T - k - 1, Nk = B * Tk;
  const float* P = params_.data();
  float* G = grads_.data();
  const MtpOffsets& mo = layout_.mtp[k];
  Activations& a = *acts_;
  MtpActs& m = a.mtp[k];
  Gemms& gm = gemms_;
  const float* x0 = m.res.data();
  const float* xm = x0 + Nk * D;
  const float* xo = xm + Nk * D;
  grow(a.dh_next, Nk * D);
  grow(a.dmtp_res, Nk * D);
  grow(a.dcat, Nk * 2 * D);
  grow(a.dnorm_in, Nk * D);
  grow(a.dln, Nk * D);
  grow(a.dh_carry, Nk * D);
  float* dh = a.dh_next.data();  // d h_{k+1} (Nk, D)

  // d h_{k+1}: from this module's logits, plus module k+1's d of its first Tk-1 positions
  gm.backward(dh, G + layout_.lm_head, m.logits.data(), m.h.data(), P + layout_.lm_head, Nk, D, V,
              false);
  if (k < M - 1) {
    const float* carry = a.dh_carry.data();  // (B, Tk-1, D)
    for (int64_t b = 0; b < B; ++b)
      add(dh + b * Tk * D, dh + b * Tk * D, carry + b * (Tk - 1) * D, (Tk - 1) * D);
  }
  float* dres = a.dmtp_res.data();
  std::fill(dres, dres + Nk * D, 0.0f);
  cpu::rmsnorm_backward(dres, G + mo.head_norm, dh, xo, P + mo.head_norm, m.rstd_head.data(), Nk,
                        D);
  block_backward(L + k, dres, x0, xm, B, Tk, grad_scale, disp);  // dres: d x0
  gm.backward(a.dcat.data(), G + mo.eh_proj, dres, m.cat.data(), P + mo.eh_proj, Nk, 2 * D, D,
              false);
  // the embedding half: enorm, then the shared embedding table
  float* dy = a.dln.data();       // one half of dcat, contiguous (Nk, D)
  float* dx = a.dnorm_in.data();  // (Nk, D)
  copy_cols(dy, D, a.dcat.data(), 2 * D, Nk, D);
  std::fill(dx, dx + Nk * D, 0.0f);
  cpu::rmsnorm_backward(dx, G + mo.enorm, dy, m.e.data(), P + mo.enorm, m.rstd_e.data(), Nk, D);
  cpu::embedding_backward(G + layout_.embed, dx, m.inputs.data(), Nk, D);
  // the h half: hnorm, giving d h_k of the first Tk positions for the depth below
  copy_cols(dy, D, a.dcat.data() + D, 2 * D, Nk, D);
  float* carry = a.dh_carry.data();
  std::fill(carry, carry + Nk * D, 0.0f);
  cpu::rmsnorm_backward(carry, G + mo.hnorm, dy, m.hs.data(), P + mo.hnorm, m.rstd_h.data(), Nk, D);
}

}  // namespace moe
