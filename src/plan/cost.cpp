#include "plan/cost.h"

#include <algorithm>
#include <cmath>

namespace moe::plan {

namespace {

double act_elem_bytes(Dtype d) { return d == Dtype::kFp32 ? 4.0 : 2.0; }

// Wire formats with kAuto resolved: gradients and combines in the activation dtype, dispatches
// in fp8 for fp8 runs (DeepSeek-V3 sec. 3.3.1: fp8 dispatch, bf16 combine).
double dispatch_bytes(const Layout& l) {
  if (l.dispatch != Wire::kAuto) return wire_bytes(l.dispatch);
  return l.dtype == Dtype::kFp8 ? wire_bytes(Wire::kFp8) : act_elem_bytes(l.dtype);
}
double combine_bytes(const Layout& l) {
  return l.combine != Wire::kAuto ? wire_bytes(l.combine) : act_elem_bytes(l.dtype);
}
// The trainer reduce-scatters fp32 gradients by ring and encoded ones (bf16, int8) by its
// compressed reduce-scatter (ParallelConfig::grad_comm_dtype; network.h: a direct exchange,
// two-level across nodes holding several of the group's ranks each).
bool compressed_grads(const Layout& l) {
  return l.grad_comm == Wire::kBf16 || l.grad_comm == Wire::kInt8;
}
double grad_bytes(const Layout& l) {
  return l.grad_comm != Wire::kAuto ? wire_bytes(l.grad_comm) : act_elem_bytes(l.dtype);
}

// Bytes per parameter of the outer Nesterov step, memory-bound like AdamW: read the
// pseudo-gradient, anchor and momentum, write momentum, anchor and parameters (fp32 each),
// plus the pseudo-gradient written before the all-reduce.
constexpr double kOuterStepBytesPerParam = 28.0;

// Layers per stage if the partition is balanced (time) and on the fullest stage (memory).
double layers_per_stage(const PlanModel& m, int64_t pp) {
  return static_cast<double>(num_compute_layers(m)) / static_cast<double>(pp);
}
int64_t max_layers_per_stage(const PlanModel& m, int64_t pp) {
  return (num_compute_layers(m) + pp - 1) / pp;
}

}  // namespace

double bubble_time(Schedule s, int64_t pp, int64_t vpp, double F, double B, double W) {
  if (pp <= 1) return 0.0;
  const double p = static_cast<double>(pp);
  switch (s) {
    case Schedule::k1F1B:
      return (p - 1) * (F + B + W);
    case Schedule::kInterleaved:
      return (p - 1) * (F + B + W) / static_cast<double>(vpp);
    case Schedule::kDualPipe:
      return std::max(0.0, (p / 2 - 1) * ((F + B) + B - 3 * W));
  }
  return 0.0;
}

double inflight_microbatches(Schedule s, int64_t pp, int64_t vpp, int64_t num_micro) {
  const double p = static_cast<double>(pp);
  double n = p;
  if (s == Schedule::kInterleaved) n = p + (p - 1) / static_cast<double>(vpp);
  if (s == Schedule::kDualPipe) n = p + 1;
  return std::min(n, static_cast<double>(num_micro));
}

double act_bytes_per_token_layer(const PlanModel& m, bool moe_layer, Recompute r, double a) {
  const auto& c = m.cfg;
  const double D = static_cast<double>(c.hidden_size),
               H = static_cast<double>(c.num_attention_heads);
  if (r == Recompute::kFull) return a * D;  // only the layer input is kept
  const bool sel = r == Recompute::kSelective;
  // Attention block: input x (norm backward), normed x (projection input), attention output
  // (o_proj input) and the fp32 log-sum-exp per head (FlashAttention backward).
  double attn = 2 * D + 0;  // x and normed x
  if (sel) attn -= D;       // normed x is recomputed from x
  if (!m.mla()) {
    attn += (H + 2 * c.num_key_value_heads) * c.head_dim;  // q, k, v after RoPE
    attn += H * c.head_dim;                                // attention output
  } else {
    const auto& x = m.cfg;
    // latents (inputs of the up-projections) and their normed copies
    attn += x.q_lora_rank + x.kv_lora_rank + x.qk_rope_head_dim;
    if (!sel) attn += x.q_lora_rank + x.kv_lora_rank;
    // up-projected q, k, v (recomputed from the latents under selective recompute, as
    // DeepSeek-V3 does for "MLA up-projection", sec. 3.2.3)
    if (!sel) attn += H * (x.qk_nope_head_dim + x.qk_rope_head_dim) * 2 + H * x.v_head_dim;
    attn += H * x.v_head_dim;  // attention output
  }
  double bytes = a * attn + 4.0 * H;  // + log-sum-exp (fp32)
  // FFN block: x and normed x, then either the dense SwiGLU or the MoE.
  double ffn = sel ? D : 2 * D;
  if (!moe_layer) {
    const double F = static_cast<double>(c.intermediate_size);
    ffn += 2 * F + (sel ? 0 : F);  // gate|up outputs; SwiGLU output (recomputed if selective)
    return bytes + a * ffn;
  }
  const double K = static_cast<double>(c.num_experts_per_tok);
  const double Fe = static_cast<double>(c.moe_intermediate_size);
  const double SF = static_cast<double>(c.shared_width());
  ffn += K * D;                            // permuted expert inputs
  ffn += K * 2 * Fe + (sel ? 0 : K * Fe);  // expert gate|up, SwiGLU output
  ffn += K * D;                            // expert outputs (gate-weight gradient in combine)
  ffn += 2 * SF + (sel ? 0 : SF);          // shared expert
  bytes += a * ffn + 4.0 * static_cast<double>(c.n_routed_experts);  // router scores (fp32)
  return bytes;
}

StateBytes state_bytes_per_param(Dtype d, int zero, int64_t shards) {
  const double n = static_cast<double>(std::max<int64_t>(1, shards));
  StateBytes s;
  if (d == Dtype::kFp32) {
    s.weights = 4;  // fp32 weights are the masters
    s.grads = 4;
    s.optimizer = 8;  // m, v
  } else {
    s.weights = 2;     // bf16 working copy (fp8 GEMMs quantize from it on the fly)
    s.grads = 4;       // fp32 main gradients (Megatron's --accumulate-allreduce-grads-in-fp32)
    s.optimizer = 12;  // fp32 master, m, v
  }
  if (zero >= 1) s.optimizer /= n;
  if (zero >= 2) s.grads /= n;
  return s;
}

Memory memory_per_device(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l) {
  const auto& cfg = m.cfg;
  const double D = static_cast<double>(cfg.hidden_size), V = static_cast<double>(cfg.vocab_size);
  const int64_t Ls = max_layers_per_stage(m, l.pp);
  const bool has_moe = num_moe_layers(m) > 0;
  const int64_t Lmoe_s =
      has_moe ? std::min<int64_t>(Ls, num_moe_layers(m) + m.cfg.num_nextn_predict_layers) : 0;
  const int64_t Ldense_s = Ls - Lmoe_s;
  const ParamCounts pc = count_params(m);
  // The fullest stage also holds the embedding or the head; DualPipe places both on the
  // first/last device (it runs both pipeline directions), so count both there.
  const double emb_head = l.schedule == Schedule::kDualPipe || l.pp == 1
                              ? static_cast<double>(pc.embedding + pc.head)
                              : static_cast<double>(std::max(pc.embedding, pc.head));
  const double final_norm = D;  // lives with the head
  const double per_layer_common = static_cast<double>(attn_params(m)) + 2 * D;
  // DualPipe keeps two copies of the stage's layers (and their gradients), DeepSeek-V3
  // Table 2; the optimizer state exists once.
  const double copies = l.schedule == Schedule::kDualPipe ? 2.0 : 1.0;
  const double tp = static_cast<double>(l.tp);
  const double layers_ne =
      (Ls * per_layer_common + Ldense_s * static_cast<double>(dense_ffn_params(m)) +
       Lmoe_s * static_cast<double>(shared_params(m) + router_params(m))) /
      tp;
  const double ends = (emb_head + final_norm) / tp;
  Memory mem;
  mem.params_nonexpert = layers_ne + ends;
  mem.params_expert = Lmoe_s * static_cast<double>(cfg.n_routed_experts / l.ep) *
                      static_cast<double>(expert_params(m));
  // ZeRO shards over the ranks that sync every step (one DiLoCo group, else the job).
  const SyncGroups sg = sync_groups(c, l);
  const StateBytes ne = state_bytes_per_param(l.dtype, l.zero, sg.dp);
  const StateBytes ex = state_bytes_per_param(l.dtype, l.zero, sg.edp);
  const double held_ne = copies * layers_ne + ends, held_ex = copies * mem.params_expert;
  mem.weights = held_ne * ne.weights + held_ex * ex.weights;
  mem.grads = held_ne * ne.grads + held_ex * ex.grads;
  mem.optimizer = mem.params_nonexpert * ne.optimizer + mem.params_expert * ex.optimizer;

  // Activations saved for backward: fp8 runs cache GEMM inputs in fp8 with one fp32 scale
  // per 128 values (DeepSeek-V3 sec. 3.3.2 "low-precision storage").
  const double a = l.dtype == Dtype::kFp8 ? 1.0 + 4.0 / 128.0 : act_elem_bytes(l.dtype);
  const double tok = static_cast<double>(l.micro_batch * job.seq);
  const double per_mb = tok / static_cast<double>(l.tp) *
                        (Lmoe_s * act_bytes_per_token_layer(m, true, l.recompute, a) +
                         Ldense_s * act_bytes_per_token_layer(m, false, l.recompute, a));
  mem.inflight = inflight_microbatches(l.schedule, l.pp, l.vpp, l.num_micro);
  mem.activations = per_mb * mem.inflight;
  if (l.recompute == Recompute::kFull)  // one layer's full activations while it recomputes
    mem.activations += tok / l.tp * act_bytes_per_token_layer(m, has_moe, Recompute::kNone, a);
  const double K = static_cast<double>(cfg.num_experts_per_tok);
  mem.dispatch_buffers = has_moe ? 2.0 * tok / l.tp * K * D * a : 0.0;
  mem.logits = tok / l.tp * V * 4.0;
  const double held = mem.params_nonexpert + mem.params_expert;
  if (compressed_grads(l)) mem.comm_state += 4.0 * held;  // error-feedback residual, fp32
  // DiLoCo's fp32 anchor and outer momentum, for the parameters the optimizer owns.
  const double owned =
      l.zero >= 1 ? mem.params_nonexpert / sg.dp + mem.params_expert / sg.edp : held;
  if (l.diloco_h > 0) mem.comm_state += 8.0 * owned;
  mem.total = mem.weights + mem.grads + mem.optimizer + mem.activations + mem.dispatch_buffers +
              mem.logits + mem.comm_state;
  mem.capacity = kMemoryHeadroom * c.memory_bytes;
  return mem;
}

double elementwise_bytes_per_token_layer(const PlanModel& m, bool moe_layer, double a) {
  const auto& c = m.cfg;
  const double D = static_cast<double>(c.hidden_size);
  // Two RMSNorms (read D, write D) and two residual adds (read 2D, write D).
  double e = 2 * 2 * D + 2 * 3 * D;
  // RoPE in place on q and k (read + write).
  const double rope = m.mla() ? (c.num_attention_heads + 1) * m.cfg.qk_rope_head_dim
                              : (c.num_attention_heads + c.num_key_value_heads) * c.head_dim;
  e += 2 * static_cast<double>(rope);
  if (!moe_layer) return a * (e + 3 * static_cast<double>(c.intermediate_size));  // SwiGLU
  const double K = static_cast<double>(c.num_experts_per_tok);
  e += (1 + K) * D;                                           // permute
  e += 3 * K * static_cast<double>(c.moe_intermediate_size);  // expert SwiGLU
  e += (K + 1) * D;                                           // unpermute + weighted sum
  e += 3 * static_cast<double>(c.shared_width());             // shared SwiGLU
  return a * e;
}

Time step_time(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l) {
  const auto& cfg = m.cfg;
  Time t;
  const double a = act_elem_bytes(l.dtype);
  const double tok = static_cast<double>(l.micro_batch * job.seq);  // one micro-batch
  const double share = tok / static_cast<double>(l.tp * l.pp);      // this device's share
  const TokenFlops f = forward_flops_per_token(m, job.seq, /*causal=*/true);
  const bool fp8 = l.dtype == Dtype::kFp8;
  const double hi_peak = l.dtype == Dtype::kFp32 ? c.peak_fp32 : c.peak_bf16;
  const double gemm_rate = fp8 ? c.peak_fp8 * c.eff.fp8_gemm : hi_peak * c.eff.gemm;
  // Grouped GEMMs run at the curve's efficiency for the rows each expert gets: the micro-batch's
  // tokens times top-k, from all ep ranks of the group, over the routed experts. Without a curve
  // (or in fp8, scaled by the curve's ratio to grouped_gemm) the single efficiency.
  const double E = static_cast<double>(std::max<int64_t>(cfg.n_routed_experts, 1));
  const double rows_per_expert = static_cast<double>(l.micro_batch * job.seq) *
                                 static_cast<double>(cfg.num_experts_per_tok * l.ep) / E;
  const double group_eff = c.eff.grouped_at(rows_per_expert);
  const double group_rate =
      fp8 ? c.peak_fp8 * std::min(1.0, c.eff.fp8_grouped_gemm * group_eff / c.eff.grouped_gemm)
          : hi_peak * group_eff;
  // Forward of one micro-batch on one stage. Output heads and the router stay in bf16
  // (DeepSeek-V3 sec. 3.3: embedding, output head, gating, norms and attention not in fp8).
  t.fwd_dense = share * f.dense_gemm / gemm_rate;
  t.fwd_expert = share * f.expert_gemm / group_rate;
  t.fwd_head = share * f.head_gemm / (hi_peak * c.eff.gemm);
  t.fwd_attn = share * f.attn_core / (hi_peak * c.eff.attention);
  const int64_t Lm = num_moe_layers(m) + m.cfg.num_nextn_predict_layers;
  const int64_t Ld = cfg.num_hidden_layers - num_moe_layers(m);
  const double V = static_cast<double>(cfg.vocab_size);
  const double ew_bytes = Lm * elementwise_bytes_per_token_layer(m, true, a) +
                          Ld * elementwise_bytes_per_token_layer(m, false, a) +
                          (1 + m.cfg.num_nextn_predict_layers) * 2 * V * 4.0;  // softmax-CE, fp32
  const double mem_rate = c.memory_bandwidth * c.eff.memory;
  t.fwd_mem = share * ew_bytes / mem_rate;
  t.fwd = t.fwd_dense + t.fwd_expert + t.fwd_head + t.fwd_attn + t.fwd_mem;
  // Backward = 2x forward: GEMMs split evenly into input- and weight-gradient halves;
  // attention and elementwise backward are all input-gradient work.
  const double gemm_f = t.fwd_dense + t.fwd_expert + t.fwd_head;
  t.bwd_weight = gemm_f;
  t.bwd_input = gemm_f + 2 * (t.fwd_attn + t.fwd_mem);
  t.bwd = t.bwd_input + t.bwd_weight;
  if (l.recompute == Recompute::kFull) {
    t.recompute = t.fwd;
  } else if (l.recompute == Recompute::kSelective) {
    // Norms and SwiGLU outputs are recomputed (elementwise), and for MLA the q/kv
    // up-projections (their GEMMs).
    double up = 0;
    if (m.mla()) {
      const auto& x = m.cfg;
      const double per_layer =
          2.0 *
          (x.q_lora_rank * cfg.num_attention_heads * (x.qk_nope_head_dim + x.qk_rope_head_dim) +
           x.kv_lora_rank * cfg.num_attention_heads * (x.qk_nope_head_dim + x.v_head_dim));
      up = share * num_compute_layers(m) * per_layer / gemm_rate;
    }
    t.recompute = 0.5 * t.fwd_mem + up;  // about half the elementwise traffic is norms/acts
  }
  const double D = static_cast<double>(cfg.hidden_size);
  const double layers_s = layers_per_stage(m, l.pp);
  const int64_t dpn = c.devices_per_node;
  // Tensor parallel with sequence parallelism: per layer 2 all-gathers + 2 reduce-scatters
  // forward and the same backward, each of the (tok, D) activation (Korthikanti et al. 2022).
  if (l.tp > 1) {
    const double one =
        ring_time(tok * D * a, l.tp, c.intra_bandwidth * c.eff.intra_comm, c.intra_latency);
    const double per_layer = (l.recompute == Recompute::kFull ? 12 : 8) * one;
    t.tp_comm = layers_s * per_layer;
  }
  // Expert parallel: dispatch and combine forward, their transposes backward (and again
  // forward under full recompute): per MoE layer, trips = 2 (3 with full recompute) times
  //   a2a(dispatch_bytes) + a2a(combine_bytes).
  // Forward dispatch and backward's gradient dispatch travel in the dispatch format (fp8 runs:
  // fp8 with one fp32 scale per 128 values, DeepSeek-V3 sec. 3.3.1), combine and backward's
  // return trip in the combine format (bf16 by default).
  const double M = static_cast<double>(l.num_micro);
  if (l.ep > 1 && Lm > 0) {
    const double n = tok / static_cast<double>(l.tp);
    const bool crosses = nodes_spanned(l.ep, 1, dpn) > 1;
    const A2aBytes bd = a2a_bytes(m, c, l, n, dispatch_bytes(l));
    const A2aBytes bc = a2a_bytes(m, c, l, n, combine_bytes(l));
    const double t_disp = a2a_time(c, bd, crosses), t_comb = a2a_time(c, bc, crosses);
    const double trips = l.recompute == Recompute::kFull ? 3.0 : 2.0;
    const double layers = static_cast<double>(Lm) / static_cast<double>(l.pp);
    t.a2a = trips * (t_disp + t_comb) * layers;
    t.inter_a2a = M * trips * (bd.inter + bc.inter) * layers;
  }
  const double mb_compute = t.fwd + t.bwd + t.recompute;
  if (l.schedule == Schedule::kDualPipe) {
    // Communication of one chunk hides under the computation of the paired chunk; the
    // communication kernels take a share of the compute units meanwhile.
    const double hidden = std::min(t.a2a, mb_compute);
    t.overlap_slowdown =
        hidden > 0 ? mb_compute * c.eff.overlap_compute_share / (1.0 - c.eff.overlap_compute_share)
                   : 0.0;
    t.a2a_exposed = std::max(0.0, t.a2a - mb_compute);
  } else {
    t.a2a_exposed = t.a2a;
  }
  t.compute = M * (mb_compute + t.overlap_slowdown);
  // Pipeline bubble from per-micro-batch stage times (exposed communication travels with F/B).
  const double comm_f = (t.tp_comm + t.a2a_exposed) / 3.0;
  t.bubble = bubble_time(l.schedule, l.pp, l.vpp, t.fwd + comm_f,
                         t.bwd_input + t.recompute + comm_f, t.bwd_weight + comm_f);
  // Pipeline point-to-point: the (tok/tp, D) boundary activation forward and its gradient
  // backward; the steady state overlaps them, warm-up and cool-down do not.
  if (l.pp > 1) {
    const bool inter = l.tp * l.dp >= dpn;
    const double bw =
        inter ? c.inter_bandwidth * c.eff.inter_comm : c.intra_bandwidth * c.eff.intra_comm;
    const double p2p = tok / l.tp * D * a / bw + (inter ? c.inter_latency : c.intra_latency);
    t.pp_exposed = 2.0 * static_cast<double>(l.pp - 1) * p2p * static_cast<double>(l.vpp);
    // Bytes: every micro-batch crosses each of the vpp*(pp-1) boundaries forward and back;
    // per device on average 2 * vpp * (pp-1)/pp boundary tensors of (tok/tp, D).
    if (inter)
      t.inter_pp = M * 2.0 * static_cast<double>(l.vpp) * static_cast<double>(l.pp - 1) /
                   static_cast<double>(l.pp) * tok / l.tp * D * a;
  }
  // Data parallel: gradients reduce-scattered and parameters all-gathered (ZeRO >= 1), or
  // all-reduced (ZeRO-0), over dp ranks (stride tp) for non-expert and edp ranks (stride ep)
  // for expert parameters, among the devices that sync every step (one DiLoCo group, else
  // the job). Gradients in the auto format or fp32 go by ring, bf16/int8 encoded by the
  // compressed reduce-scatter (network.h: direct exchange; two-level, exact f32 inside the node
  // and (H-1)/n of the encoded buffer per device across, when every node holds L > 1 of the
  // group's ranks); parameters are all-gathered by ring in the activation dtype (the
  // bf16 copy; fp32 on CPU). Overlap (Megatron --overlap-grad-reduce/--overlap-param-gather,
  // the trainer's [parallel] overlap): the reduce-scatter hides under the last micro-batch's
  // backward, the all-gather under the first forward; without it both follow the backward.
  {
    const SyncGroups sg = sync_groups(c, l);
    const ParamCounts pc = count_params(m);
    const double p_ne = static_cast<double>(pc.non_expert) / (l.tp * l.pp);
    const double p_ex = static_cast<double>(pc.expert) / (l.ep * l.pp);
    const GroupSpan g_ne = group_span(sg.dp, l.tp, dpn), g_ex = group_span(sg.edp, l.ep, dpn);
    auto reduce = [&](double params, const GroupSpan& g) {
      return compressed_grads(l) ? compressed_reduce_scatter(c, params, grad_bytes(l), g)
                                 : ring_collective(c, params * grad_bytes(l), g);
    };
    const CommCost rs_ne = reduce(p_ne, g_ne), rs_ex = reduce(p_ex, g_ex);
    const CommCost ag_ne = ring_collective(c, p_ne * a, g_ne);
    const CommCost ag_ex = ring_collective(c, p_ex * a, g_ex);
    const double rs = rs_ne.time + rs_ex.time, ag = ag_ne.time + ag_ex.time;
    t.dp_rs = rs, t.dp_ag = ag;
    t.dp_comm = rs + ag;
    // ZeRO-0 all-reduces (= reduce-scatter + all-gather of the gradients): same volume,
    // but the whole of it follows the last backward.
    if (!l.overlap)
      t.dp_exposed = rs + ag;
    else if (l.zero == 0)
      t.dp_exposed = std::max(0.0, rs + ag - t.bwd);
    else
      t.dp_exposed = std::max(0.0, rs - t.bwd) + std::max(0.0, ag - t.fwd);
    t.inter_grad = rs_ne.inter_bytes + rs_ex.inter_bytes;
    t.inter_param = ag_ne.inter_bytes + ag_ex.inter_bytes;
    // AdamW is memory-bound: read p, g, m, v and write p, m, v (fp32), plus the bf16 copy.
    const double shard_ne = l.zero >= 1 ? p_ne / sg.dp : p_ne;
    const double shard_ex = l.zero >= 1 ? p_ex / sg.edp : p_ex;
    const double bytes_per_param = l.dtype == Dtype::kFp32 ? 28.0 : 30.0;
    const double opt_eff = c.eff.optimizer > 0 ? c.eff.optimizer : c.eff.memory;
    t.optimizer = (shard_ne + shard_ex) * bytes_per_param / (c.memory_bandwidth * opt_eff);
    // DiLoCo (Douillard et al. 2023, arXiv 2311.08105; src/parallel/diloco.h): every H steps
    // each device all-reduces the pseudo-gradient (parameter delta) of the P parameters its
    // optimizer owns (ZeRO >= 1: its shard, p_ne/dp + p_ex/edp of the group; ZeRO-0: all it
    // holds) with the devices at its place in the other groups (groups ranks, stride = group
    // size: one per node when groups are whole nodes), then takes the outer Nesterov step;
    // the group's usual parameter all-gather spreads the result:
    //   outer_sync = reduce-scatter + all-gather of P * wire_bytes(outer_comm)
    //                (fp32: both by ring; int8: encoded, reduce-scatter by direct exchange:
    //                the trainer's compressed all_reduce, whose first phase stays flat)
    //   outer_step = P * 28 bytes / memory rate;   per step: (outer_sync + outer_step) / H.
    // Nothing overlaps it: every rank waits for the sync.
    if (sg.groups > 1) {
      const GroupSpan go = group_span(sg.groups, sg.devices, dpn);
      const double P = shard_ne + shard_ex;
      const double bytes = P * wire_bytes(l.outer_comm);
      const CommCost ors = l.outer_comm == Wire::kFp32 ? ring_collective(c, bytes, go)
                                                       : direct_exchange(c, bytes, go);
      const CommCost oag = ring_collective(c, bytes, go);
      const double H = static_cast<double>(l.diloco_h);
      t.outer_sync = ors.time + oag.time;
      t.outer_step = P * kOuterStepBytesPerParam / mem_rate;
      t.outer_inter_bytes = ors.inter_bytes + oag.inter_bytes;
      t.diloco = (t.outer_sync + t.outer_step) / H;
      t.inter_diloco = t.outer_inter_bytes / H;
    }
  }
  t.exposed_comm = M * (t.tp_comm + t.a2a_exposed) + t.dp_exposed + t.pp_exposed;
  t.inter_bytes = t.inter_grad + t.inter_param + t.inter_a2a + t.inter_pp + t.inter_diloco;
  // Network CPU work: on CPU devices every byte sent or received across nodes costs
  // inter_cpu_per_byte of the device's compute time. While communication is exposed the cores
  // would idle anyway; what hides under compute lengthens it:
  //   net_cpu = cpu_per_byte * 2 (sent + received) * sum over overlapped traffic of
  //             bytes * hidden time / total time        (gradient sync; all-to-all under DualPipe)
  if (c.inter_cpu_per_byte > 0) {
    auto hidden = [](double total, double exposed) {
      return total > 0 ? std::max(0.0, total - exposed) / total : 0.0;
    };
    const double b = (t.inter_grad + t.inter_param) * hidden(t.dp_comm, t.dp_exposed) +
                     t.inter_a2a * hidden(t.a2a, t.a2a_exposed);
    t.net_cpu = c.inter_cpu_per_byte * 2.0 * b;
  }
  t.step = t.compute + t.bubble + t.exposed_comm + t.optimizer + t.diloco + t.net_cpu;

  const double devices = static_cast<double>(l.devices());
  const double tokens_step = static_cast<double>(job.global_batch * job.seq);
  t.tokens_per_s_per_device = tokens_step / t.step / devices;
  t.model_tflops_per_device =
      train_flops_per_token(m, job.seq, true) * t.tokens_per_s_per_device / 1e12;
  t.megatron_tflops_per_device =
      train_flops_per_token(m, job.seq, false) * t.tokens_per_s_per_device / 1e12;
  t.mfu = t.model_tflops_per_device * 1e12 / hi_peak;
  if (job.tokens > 0) {
    t.device_hours = job.tokens / t.tokens_per_s_per_device / 3600.0;
    t.days = t.device_hours / devices / 24.0;
  }
  return t;
}

}  // namespace moe::plan
