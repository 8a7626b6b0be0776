// The MoE layer (DESIGN.md sections 3 and 9) on one process: route -> permute -> experts ->
// weighted unpermute, plus shared experts. Backward is the same list reversed.
#include "model/moe_layer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/moe_kernels.h"

namespace moe {

namespace {

struct Dims {
  int64_t N, D, E, K, Fe, SF;  // SF = S*Fe, the shared width
  int64_t block;               // floats per routed expert: 3*Fe*D
};

Dims dims_of(const ModelConfig& cfg, int64_t B, int64_t T, const char* op) {
  Dims d{B * T, cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok,
         cfg.moe_intermediate_size, cfg.shared_width(), 0};
  d.block = 3 * d.Fe * d.D;
  MOE_CHECK(B > 0 && T > 0, op, "need B > 0 and T > 0, got B=", B, " T=", T);
  MOE_CHECK(d.K >= 1 && d.K <= d.E, op, "num_experts_per_tok=", d.K,
            " must be in [1, n_routed_experts=", d.E, "]");
  MOE_CHECK(d.N * d.K < (int64_t(1) << 31), op, "N*K=", d.N * d.K,
            " slots overflow int32 rows; use smaller micro-batches");
  return d;
}

cpu::RouterSpec router_spec(const ModelConfig& cfg, const char* op) {
  MOE_CHECK(cfg.scoring_func == "softmax" || cfg.scoring_func == "sigmoid", op,
            "scoring_func must be \"softmax\" or \"sigmoid\", got \"", cfg.scoring_func, "\"");
  cpu::RouterSpec s;
  s.E = cfg.n_routed_experts;
  s.K = cfg.num_experts_per_tok;
  s.scoring = cfg.scoring_func == "sigmoid" ? cpu::ScoringFunc::kSigmoid
                                            : cpu::ScoringFunc::kSoftmax;
  s.norm_topk_prob = cfg.norm_topk_prob;
  s.routed_scaling_factor = cfg.routed_scaling_factor;
  s.n_group = cfg.n_group;
  s.topk_group = cfg.topk_group;
  // The kernel relies on these (ModelConfig::validate explains how to fix them).
  MOE_CHECK(s.n_group >= 1 && s.E % s.n_group == 0 && s.topk_group >= 1 &&
                s.topk_group <= s.n_group && s.K <= s.topk_group * (s.E / s.n_group),
            op, "group-limited routing needs n_group | n_routed_experts, 1 <= topk_group <= ",
            "n_group and num_experts_per_tok <= topk_group * n_routed_experts / n_group; got ",
            "n_group=", s.n_group, " topk_group=", s.topk_group, " E=", s.E, " K=", s.K);
  return s;
}

cpu::RouterLossCoefs loss_coefs(const ModelConfig& cfg, double scale, double load_scale) {
  return {cfg.aux_loss_alpha * scale, cfg.seq_aux_alpha * scale, cfg.z_loss_coef * scale,
          load_scale};
}

// Grow-only: buffers are sized for the worst case (every slot kept) so that the number of
// kept rows M can change between steps without reallocating.
template <class V>
void grow(V& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
}

// The f32 path when no Gemms is given (tests and tools that call the layer directly).
Gemms& gemms_of(const MoeWeights& w) {
  thread_local Gemms f32;
  return w.gemms ? *w.gemms : f32;
}

}  // namespace

void moe_forward(float* y, const float* x, const MoeWeights& w, const ModelConfig& cfg, int64_t B,
                 int64_t T, MoeCache& c, MoeStats& stats, TokenDispatcher& disp) {
  const Dims d = dims_of(cfg, B, T, "moe_forward");
  const cpu::RouterSpec spec = router_spec(cfg, "moe_forward");
  MOE_CHECK(w.router && w.experts && (d.SF == 0 || (w.shared_gu && w.shared_down)),
            "moe_forward", "missing weights (router, experts, or shared with S=",
            cfg.n_shared_experts, ")");
  const int64_t NK = d.N * d.K, El = disp.experts_local(d.E), W = disp.data_ranks();
  Gemms& gm = gemms_of(w);
  RoutingPlan& p = c.plan;
  grow(c.logits, d.N * d.E), grow(c.scores, d.N * d.E);
  grow(p.topk_idx, NK), grow(p.topk_w, NK), grow(p.slot_row, NK);
  grow(p.expert_count, d.E), grow(p.offsets, d.E + 1);
  grow(c.load, d.E), grow(c.seq_load, B * d.E), grow(c.load_total, d.E), grow(c.load_before, d.E);
  grow(c.sorted_x, NK * d.D);
  grow(c.shared_gu, d.N * 2 * d.SF), grow(c.shared_h, d.N * d.SF);

  // 1. Route: logits in fp32, scores, top-k, gate weights; the dispatch plan; loss terms. With
  //    data-parallel ranks, the batch-level aux loss and the capacity see the global batch.
  cpu::linear_forward(c.logits.data(), x, w.router, d.N, d.D, d.E);  // (N, E)
  cpu::router_forward(c.scores.data(), p.topk_idx.data(), p.topk_w.data(), c.logits.data(),
                      w.bias, d.N, spec);
  cpu::router_counts(c.load.data(), c.seq_load.data(), p.topk_idx.data(), B, T, d.E, d.K);
  const bool global = W > 1 && (cfg.aux_loss_alpha != 0 || cfg.capacity_factor > 0);
  if (global) {
    disp.exchange_load(c.load.data(), c.load_total.data(), c.load_before.data(), d.E);
  } else {
    std::copy(c.load.begin(), c.load.begin() + d.E, c.load_total.begin());
  }
  c.load_scale = global ? 1.0 / double(W) : 1.0;
  const int64_t cap = cpu::expert_capacity(cfg.capacity_factor, global ? d.N * W : d.N, d.K, d.E);
  stats.dropped = cpu::route_plan(p.slot_row.data(), p.expert_count.data(), p.offsets.data(),
                                  p.topk_idx.data(), d.N, d.E, d.K, cap,
                                  global ? c.load_before.data() : nullptr);
  const cpu::RouterLosses losses =
      cpu::router_losses(c.logits.data(), c.scores.data(), c.load_total.data(),
                         c.seq_load.data(), B, T, spec, loss_coefs(cfg, 1.0, c.load_scale));
  stats.aux_loss = losses.aux, stats.seq_aux_loss = losses.seq_aux, stats.z_loss = losses.z;
  stats.load.assign(c.load.begin(), c.load.begin() + d.E);

  // 2. Dispatch: token rows to their experts' rows, and those rows to the experts' ranks.
  cpu::permute(c.sorted_x.data(), x, p.slot_row.data(), d.N, d.K, d.D);  // (M, D)
  disp.plan(c.exchange, p.expert_count.data(), d.E);
  c.remote = !disp.local();
  const float* xin = disp.dispatch(c.exchange, c.sorted_x.data(), d.D, c.local_x);  // (Ml, D)

  // 3. Experts: gate/up (one [2Fe, D] matrix per expert), SwiGLU, down.
  const int64_t* off = c.exchange.local_offsets.data();
  const int64_t Ml = off[El];
  grow(c.gu, Ml * 2 * d.Fe), grow(c.h, Ml * d.Fe), grow(c.local_y, Ml * d.D);
  gm.grouped_forward(c.gu.data(), xin, w.experts, d.block, off, El, d.D, 2 * d.Fe);  // (Ml, 2Fe)
  cpu::swiglu_forward(c.h.data(), c.gu.data(), Ml, d.Fe);                           // (Ml, Fe)
  gm.grouped_forward(c.local_y.data(), c.h.data(), w.experts + 2 * d.Fe * d.D, d.block, off, El,
                     d.Fe, d.D);                                                    // (Ml, D)

  // 4. Combine: the rows come home. Shared experts write y; the routed rows are then added
  //    with their gate weights.
  const float* sorted_y = disp.combine(c.exchange, c.local_y.data(), d.D, c.sorted_y);  // (M, D)
  if (d.SF > 0) {
    gm.forward(c.shared_gu.data(), x, w.shared_gu, d.N, d.D, 2 * d.SF);     // (N, 2SF)
    cpu::swiglu_forward(c.shared_h.data(), c.shared_gu.data(), d.N, d.SF);  // (N, SF)
    gm.forward(y, c.shared_h.data(), w.shared_down, d.N, d.SF, d.D);         // (N, D)
  } else {
    std::memset(y, 0, sizeof(float) * size_t(d.N * d.D));
  }
  cpu::unpermute_weighted(y, sorted_y, p.topk_w.data(), p.slot_row.data(), d.N, d.K, d.D);
}

void moe_backward(float* dx, const float* dy, const float* x, const MoeWeights& w,
                  const MoeGrads& g, const ModelConfig& cfg, int64_t B, int64_t T,
                  const MoeCache& c, MoeScratch& s, float aux_grad_scale, TokenDispatcher& disp) {
  const Dims d = dims_of(cfg, B, T, "moe_backward");
  const cpu::RouterSpec spec = router_spec(cfg, "moe_backward");
  const int64_t NK = d.N * d.K, El = disp.experts_local(d.E);
  const RoutingPlan& p = c.plan;
  Gemms& gm = gemms_of(w);
  MOE_CHECK(int64_t(p.slot_row.size()) >= NK && int64_t(c.seq_load.size()) >= B * d.E &&
                int64_t(c.exchange.local_offsets.size()) == El + 1,
            "moe_backward", "cache holds no forward pass for N=", d.N,
            "; call moe_forward with the same B, T and dispatcher first");
  MOE_CHECK(g.router && g.experts && (d.SF == 0 || (g.shared_gu && g.shared_down)),
            "moe_backward", "missing gradient buffers (router, experts, or shared with S=",
            cfg.n_shared_experts, ")");
  const int64_t* off = c.exchange.local_offsets.data();
  const int64_t Ml = off[El];
  grow(s.drows, NK * d.D);
  grow(s.dh, std::max(Ml * d.Fe, d.N * d.SF));
  grow(s.dgu, std::max(Ml * 2 * d.Fe, d.N * 2 * d.SF));
  grow(s.dgate, NK), grow(s.dlogits, d.N * d.E);
  if (c.remote) grow(s.dlocal, Ml * d.D);
  const float* w_down = w.experts + 2 * d.Fe * d.D;
  float* g_down = g.experts + 2 * d.Fe * d.D;
  const float* xin = c.remote ? c.local_x.data() : c.sorted_x.data();   // (Ml, D)
  const float* sorted_y = c.remote ? c.sorted_y.data() : c.local_y.data();  // (M, D)
  float* dsorted_y = s.drows.data();  // (M, D)

  // 4. Combine, reversed: gate-weighted rows -> d rows and d gate weights; the d rows travel
  //    to the experts' ranks as the rows did in forward.
  cpu::unpermute_weighted_backward(dsorted_y, s.dgate.data(), dy, sorted_y, p.topk_w.data(),
                                   p.slot_row.data(), d.N, d.K, d.D);
  const float* dlocal_y = disp.dispatch(c.exchange, dsorted_y, d.D, s.dlocal);  // (Ml, D)
  // d of the experts' input rows reuses the buffer of dlocal_y once that is dead: dlocal with
  // expert parallelism, else drows.
  float* dlocal_x = c.remote ? s.dlocal.data() : s.drows.data();  // (Ml, D)

  // 3. Experts, reversed.
  gm.grouped_backward(s.dh.data(), g_down, dlocal_y, c.h.data(), w_down, d.block, off, El, d.Fe,
                      d.D);                                                     // (Ml, Fe)
  cpu::swiglu_backward(s.dgu.data(), s.dh.data(), c.gu.data(), Ml, d.Fe);       // (Ml, 2Fe)
  gm.grouped_backward(dlocal_x, g.experts, s.dgu.data(), xin, w.experts, d.block, off, El, d.D,
                      2 * d.Fe);                                                // (Ml, D)

  // 2. Dispatch, reversed: the d rows come home; dx is the sum of each token's kept rows.
  const float* drows = disp.combine(c.exchange, dlocal_x, d.D, s.drows);        // (M, D)
  cpu::permute_backward(dx, drows, p.slot_row.data(), d.N, d.K, d.D);           // (N, D)

  // Shared experts (dx +=).
  if (d.SF > 0) {
    float* dshared_h = s.dh.data();    // (N, SF)
    float* dshared_gu = s.dgu.data();  // (N, 2SF)
    gm.backward(dshared_h, g.shared_down, dy, c.shared_h.data(), w.shared_down, d.N, d.SF, d.D,
                false);
    cpu::swiglu_backward(dshared_gu, dshared_h, c.shared_gu.data(), d.N, d.SF);
    gm.backward(dx, g.shared_gu, dshared_gu, x, w.shared_gu, d.N, d.D, 2 * d.SF, true);
  }

  // 1. Route, reversed: gate weights and the auxiliary terms -> logits -> router and x.
  cpu::router_backward(s.dlogits.data(), s.dgate.data(), c.logits.data(), c.scores.data(),
                       p.topk_idx.data(), p.topk_w.data(), c.load_total.data(),
                       c.seq_load.data(), B, T, spec,
                       loss_coefs(cfg, double(aux_grad_scale), c.load_scale));  // (N, E)
  cpu::linear_backward_w(g.router, s.dlogits.data(), x, d.N, d.D, d.E);
  cpu::linear_backward_x(dx, s.dlogits.data(), w.router, d.N, d.D, d.E, true);
}

void update_balance_bias(float* bias, const int64_t* load, int64_t E, double rate) {
  // sign(mean - load_e) = sign(sum - E * load_e), exact in integers.
  int64_t sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += load[e];
  for (int64_t e = 0; e < E; ++e) {
    const int64_t diff = sum - E * load[e];
    const int sign = (diff > 0) - (diff < 0);
    bias[e] += float(rate) * float(sign);  // fp32, as a float32 parameter update would
  }
}

}  // namespace moe
