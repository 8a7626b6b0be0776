#include "plan/cost.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";

double act_elem_bytes(Dtype d) { return d == Dtype::kFp32 ? 4.0 : 2.0; }

// Layers per stage if the partition is balanced (time) and on the fullest stage (memory).
double layers_per_stage(const PlanModel& m, int64_t pp) {
  return static_cast<double>(num_compute_layers(m)) / static_cast<double>(pp);
}
int64_t max_layers_per_stage(const PlanModel& m, int64_t pp) {
  return (num_compute_layers(m) + pp - 1) / pp;
}

}  // namespace

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone: return "none";
    case Recompute::kSelective: return "sel";
    case Recompute::kFull: return "full";
  }
  return "?";
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::k1F1B: return "1f1b";
    case Schedule::kInterleaved: return "interleaved";
    case Schedule::kDualPipe: return "dualpipe";
  }
  return "?";
}

std::string Layout::str() const {
  std::ostringstream os;
  os << "tp" << tp << " pp" << pp;
  if (schedule == Schedule::kInterleaved) os << "x" << vpp;
  os << " ep" << ep << " dp" << dp << " mb" << micro_batch << "x" << num_micro << " "
     << schedule_name(schedule) << " " << recompute_name(recompute) << " zero" << zero << " "
     << dtype_name(dtype);
  if (node_limited) os << " nodelim";
  return os.str();
}

Layout parse_layout(const std::string& spec) {
  Layout l;
  std::stringstream ss(spec);
  std::string item;
  const char* help = "; use e.g. tp=1,pp=16,ep=64,mb=1,sched=dualpipe,recompute=selective,"
                     "zero=1,dtype=fp8,nodelimit=1";
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    MOE_CHECK(eq != std::string::npos, kOp, "--layout item '", item, "' has no '='", help);
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    auto num = [&]() {
      try {
        size_t pos = 0;
        const long long x = std::stoll(v, &pos);
        if (pos == v.size() && x >= 0) return static_cast<int64_t>(x);
      } catch (const std::exception&) {
      }
      MOE_FAIL(kOp, "--layout ", k, "=", v, ": expected a non-negative integer", help);
    };
    if (k == "tp") l.tp = num();
    else if (k == "pp") l.pp = num();
    else if (k == "vpp") l.vpp = num();
    else if (k == "ep") l.ep = num();
    else if (k == "mb") l.micro_batch = num();
    else if (k == "zero") l.zero = static_cast<int>(num());
    else if (k == "nodelimit") l.node_limited = num() != 0;
    else if (k == "sched") {
      if (v == "1f1b") l.schedule = Schedule::k1F1B;
      else if (v == "interleaved") l.schedule = Schedule::kInterleaved;
      else if (v == "dualpipe") l.schedule = Schedule::kDualPipe;
      else MOE_FAIL(kOp, "--layout sched=", v, ": allowed 1f1b, interleaved, dualpipe");
    } else if (k == "recompute") {
      if (v == "none") l.recompute = Recompute::kNone;
      else if (v == "selective" || v == "sel") l.recompute = Recompute::kSelective;
      else if (v == "full") l.recompute = Recompute::kFull;
      else MOE_FAIL(kOp, "--layout recompute=", v, ": allowed none, selective, full");
    } else if (k == "dtype") {
      if (v == "bf16") l.dtype = Dtype::kBf16;
      else if (v == "fp8") l.dtype = Dtype::kFp8;
      else if (v == "fp32") l.dtype = Dtype::kFp32;
      else MOE_FAIL(kOp, "--layout dtype=", v, ": allowed bf16, fp8, fp32");
    } else {
      MOE_FAIL(kOp, "--layout: unknown item '", k, "'; allowed tp, pp, vpp, ep, mb, sched, "
               "recompute, zero, dtype, nodelimit");
    }
  }
  if (l.schedule != Schedule::kInterleaved) l.vpp = 1;
  return l;
}

bool complete_layout(const PlanModel& m, const Cluster& c, const Job& job, Layout& l,
                     std::string* why) {
  auto fail = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (l.tp < 1 || l.pp < 1 || l.ep < 1 || l.micro_batch < 1 || l.vpp < 1)
    return fail("sizes must be >= 1");
  if (job.devices % (l.tp * l.pp) != 0) return fail("tp*pp does not divide the device count");
  l.dp = job.devices / (l.tp * l.pp);
  if ((l.tp * l.dp) % l.ep != 0) return fail("ep does not divide tp*dp");
  if (m.cfg.n_routed_experts % l.ep != 0) return fail("ep does not divide n_routed_experts");
  if (l.tp > c.devices_per_node) return fail("tp larger than a node");
  if (m.cfg.num_attention_heads % l.tp != 0) return fail("tp does not divide the heads");
  if (l.pp * l.vpp > num_compute_layers(m)) return fail("more pipeline stages than layers");
  if (job.global_batch % (l.dp * l.micro_batch) != 0)
    return fail("dp*micro_batch does not divide the global batch");
  l.num_micro = job.global_batch / (l.dp * l.micro_batch);
  if (l.schedule == Schedule::kDualPipe && (l.pp % 2 != 0 || l.pp < 2))
    return fail("DualPipe needs an even pp >= 2");
  // DualPipe feeds micro-batches from both ends; each direction needs pp of them to fill.
  if (l.schedule == Schedule::kDualPipe && l.num_micro < 2 * l.pp)
    return fail("DualPipe needs at least 2*pp micro-batches");
  if (l.schedule == Schedule::kInterleaved && (l.pp < 2 || l.vpp < 2))
    return fail("interleaved needs pp >= 2 and vpp >= 2");
  if (l.schedule == Schedule::kInterleaved && l.num_micro % l.pp != 0)
    return fail("interleaved needs num_micro divisible by pp");
  if (l.dtype == Dtype::kFp8 && c.peak_fp8 <= 0) return fail("the device has no fp8");
  if (l.zero < 0 || l.zero > 2) return fail("zero must be 0, 1 or 2");
  if (l.node_limited && m.x.n_group <= 1) return fail("node-limited routing needs n_group > 1");
  return true;
}

double ring_time(double bytes, int64_t n, double bandwidth, double latency) {
  if (n <= 1) return 0.0;
  const double f = static_cast<double>(n - 1) / static_cast<double>(n);
  return f * bytes / bandwidth + static_cast<double>(n - 1) * latency;
}

int64_t nodes_spanned(int64_t size, int64_t stride, int64_t per_node) {
  if (size <= 1) return 1;
  if (stride >= per_node) return size;  // every member on its own node
  const int64_t extent = size * stride;  // ranks from first to one past the last member
  return std::max<int64_t>(1, (extent + per_node - 1) / per_node);
}

double expected_nodes_touched(int64_t k, int64_t g) {
  if (g <= 1) return 1.0;
  const double gd = static_cast<double>(g);
  return gd * (1.0 - std::pow(1.0 - 1.0 / gd, static_cast<double>(k)));
}

double bubble_time(Schedule s, int64_t pp, int64_t vpp, double F, double B, double W) {
  if (pp <= 1) return 0.0;
  const double p = static_cast<double>(pp);
  switch (s) {
    case Schedule::k1F1B: return (p - 1) * (F + B + W);
    case Schedule::kInterleaved: return (p - 1) * (F + B + W) / static_cast<double>(vpp);
    case Schedule::kDualPipe: return std::max(0.0, (p / 2 - 1) * ((F + B) + B - 3 * W));
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
  const double D = static_cast<double>(c.hidden_size), H = static_cast<double>(c.num_attention_heads);
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
    const auto& x = m.x;
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
  ffn += K * D;                     // permuted expert inputs
  ffn += K * 2 * Fe + (sel ? 0 : K * Fe);  // expert gate|up, SwiGLU output
  ffn += K * D;                     // expert outputs (gate-weight gradient in combine)
  ffn += 2 * SF + (sel ? 0 : SF);   // shared expert
  bytes += a * ffn + 4.0 * static_cast<double>(c.n_routed_experts);  // router scores (fp32)
  return bytes;
}

StateBytes state_bytes_per_param(Dtype d, int zero, int64_t shards) {
  const double n = static_cast<double>(std::max<int64_t>(1, shards));
  StateBytes s;
  if (d == Dtype::kFp32) {
    s.weights = 4;    // fp32 weights are the masters
    s.grads = 4;
    s.optimizer = 8;  // m, v
  } else {
    s.weights = 2;    // bf16 working copy (fp8 GEMMs quantize from it on the fly)
    s.grads = 4;      // fp32 main gradients (Megatron's --accumulate-allreduce-grads-in-fp32)
    s.optimizer = 12; // fp32 master, m, v
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
  const int64_t Lmoe_s = has_moe ? std::min<int64_t>(Ls, num_moe_layers(m) +
                                                           m.x.num_nextn_predict_layers)
                                 : 0;
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
  const double layers_ne = (Ls * per_layer_common +
                            Ldense_s * static_cast<double>(dense_ffn_params(m)) +
                            Lmoe_s * static_cast<double>(shared_params(m) + router_params(m))) / tp;
  const double ends = (emb_head + final_norm) / tp;
  Memory mem;
  mem.params_nonexpert = layers_ne + ends;
  mem.params_expert = Lmoe_s * static_cast<double>(cfg.n_routed_experts / l.ep) *
                      static_cast<double>(expert_params(m));
  const StateBytes ne = state_bytes_per_param(l.dtype, l.zero, l.dp);
  const StateBytes ex = state_bytes_per_param(l.dtype, l.zero, l.edp());
  const double held_ne = copies * layers_ne + ends, held_ex = copies * mem.params_expert;
  mem.weights = held_ne * ne.weights + held_ex * ex.weights;
  mem.grads = held_ne * ne.grads + held_ex * ex.grads;
  mem.optimizer = mem.params_nonexpert * ne.optimizer + mem.params_expert * ex.optimizer;

  // Activations saved for backward: fp8 runs cache GEMM inputs in fp8 with one fp32 scale
  // per 128 values (DeepSeek-V3 sec. 3.3.2 "low-precision storage").
  const double a = l.dtype == Dtype::kFp8 ? 1.0 + 4.0 / 128.0 : act_elem_bytes(l.dtype);
  const double tok = static_cast<double>(l.micro_batch * job.seq);
  const double per_mb =
      tok / static_cast<double>(l.tp) *
      (Lmoe_s * act_bytes_per_token_layer(m, true, l.recompute, a) +
       Ldense_s * act_bytes_per_token_layer(m, false, l.recompute, a));
  mem.inflight = inflight_microbatches(l.schedule, l.pp, l.vpp, l.num_micro);
  mem.activations = per_mb * mem.inflight;
  if (l.recompute == Recompute::kFull)  // one layer's full activations while it recomputes
    mem.activations += tok / l.tp * act_bytes_per_token_layer(m, has_moe, Recompute::kNone, a);
  const double K = static_cast<double>(cfg.num_experts_per_tok);
  mem.dispatch_buffers = has_moe ? 2.0 * tok / l.tp * K * D * a : 0.0;
  mem.logits = tok / l.tp * V * 4.0;
  mem.total = mem.weights + mem.grads + mem.optimizer + mem.activations + mem.dispatch_buffers +
              mem.logits;
  mem.capacity = kMemoryHeadroom * c.memory_bytes;
  return mem;
}

A2aBytes a2a_bytes(const PlanModel& m, const Cluster& c, const Layout& l, double tokens,
                   double elem_bytes) {
  A2aBytes b;
  if (l.ep <= 1) return b;
  const double D = static_cast<double>(m.cfg.hidden_size);
  const int64_t K = m.cfg.num_experts_per_tok;
  const int64_t G = nodes_spanned(l.ep, 1, c.devices_per_node);  // nodes of one ep group
  const double per_node = static_cast<double>(l.ep) / static_cast<double>(G);
  const double ep = static_cast<double>(l.ep);
  const double row = D * elem_bytes;
  if (!l.node_limited || G == 1) {
    // Each of the K copies goes to a uniformly random expert: off-node with probability
    // (ep - per_node)/ep, to another device of this node with (per_node - 1)/ep.
    b.inter = tokens * K * (ep - per_node) / ep * row;
    b.intra = tokens * K * (per_node - 1) / ep * row;
    return b;
  }
  // Node-limited routing (DeepSeek-V3 sec. 2.1.2 and 3.2.2): a token reaches at most
  // `cap` nodes, is sent once to each over the network and forwarded inside the node.
  const int64_t ng = m.x.n_group, tg = m.x.topk_group;
  const int64_t cap = std::min<int64_t>(G, (tg * G + ng - 1) / ng);
  const double nodes = std::min(expected_nodes_touched(K, G), static_cast<double>(cap));
  const double remote = nodes * static_cast<double>(G - 1) / static_cast<double>(G);
  b.inter = tokens * remote * row;
  b.intra = tokens * K * (per_node - 1) / per_node * row;
  return b;
}

double a2a_time(const Cluster& c, const A2aBytes& b, bool crosses_nodes) {
  const double t_inter = b.inter / (c.inter_bandwidth * c.eff.inter_comm);
  const double t_intra = b.intra / (c.intra_bandwidth * c.eff.intra_comm);
  if (b.inter <= 0 && b.intra <= 0) return 0.0;
  return std::max(t_inter, t_intra) + (crosses_nodes ? c.inter_latency : c.intra_latency);
}

double elementwise_bytes_per_token_layer(const PlanModel& m, bool moe_layer, double a) {
  const auto& c = m.cfg;
  const double D = static_cast<double>(c.hidden_size);
  // Two RMSNorms (read D, write D) and two residual adds (read 2D, write D).
  double e = 2 * 2 * D + 2 * 3 * D;
  // RoPE in place on q and k (read + write).
  const double rope = m.mla() ? (c.num_attention_heads + 1) * m.x.qk_rope_head_dim
                              : (c.num_attention_heads + c.num_key_value_heads) * c.head_dim;
  e += 2 * static_cast<double>(rope);
  if (!moe_layer) return a * (e + 3 * static_cast<double>(c.intermediate_size));  // SwiGLU
  const double K = static_cast<double>(c.num_experts_per_tok);
  e += (1 + K) * D;                                                // permute
  e += 3 * K * static_cast<double>(c.moe_intermediate_size);      // expert SwiGLU
  e += (K + 1) * D;                                                // unpermute + weighted sum
  e += 3 * static_cast<double>(c.shared_width());                  // shared SwiGLU
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
  const double group_rate = fp8 ? c.peak_fp8 * c.eff.fp8_grouped_gemm : hi_peak * c.eff.grouped_gemm;
  // Forward of one micro-batch on one stage. Output heads and the router stay in bf16
  // (DeepSeek-V3 sec. 3.3: embedding, output head, gating, norms and attention not in fp8).
  t.fwd_dense = share * f.dense_gemm / gemm_rate;
  t.fwd_expert = share * f.expert_gemm / group_rate;
  t.fwd_head = share * f.head_gemm / (hi_peak * c.eff.gemm);
  t.fwd_attn = share * f.attn_core / (hi_peak * c.eff.attention);
  const int64_t Lm = num_moe_layers(m) + m.x.num_nextn_predict_layers;
  const int64_t Ld = cfg.num_hidden_layers - num_moe_layers(m);
  const double V = static_cast<double>(cfg.vocab_size);
  const double ew_bytes = Lm * elementwise_bytes_per_token_layer(m, true, a) +
                          Ld * elementwise_bytes_per_token_layer(m, false, a) +
                          (1 + m.x.num_nextn_predict_layers) * 2 * V * 4.0;  // softmax-CE, fp32
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
      const auto& x = m.x;
      const double per_layer = 2.0 * (x.q_lora_rank * cfg.num_attention_heads *
                                           (x.qk_nope_head_dim + x.qk_rope_head_dim) +
                                       x.kv_lora_rank * cfg.num_attention_heads *
                                           (x.qk_nope_head_dim + x.v_head_dim));
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
    const double one = ring_time(tok * D * a, l.tp, c.intra_bandwidth * c.eff.intra_comm,
                                 c.intra_latency);
    const double per_layer = (l.recompute == Recompute::kFull ? 12 : 8) * one;
    t.tp_comm = layers_s * per_layer;
  }
  // Expert parallel: dispatch and combine forward, their transposes backward (and again
  // forward under full recompute). fp8 runs send dispatches in fp8 with one fp32 scale per
  // 128 values (DeepSeek-V3 sec. 3.3.1); combines stay bf16.
  if (l.ep > 1 && Lm > 0) {
    const double n = tok / static_cast<double>(l.tp);
    const bool crosses = nodes_spanned(l.ep, 1, dpn) > 1;
    const double disp_b = fp8 ? 1.0 + 4.0 / 128.0 : a;
    const double t_disp = a2a_time(c, a2a_bytes(m, c, l, n, disp_b), crosses);
    const double t_comb = a2a_time(c, a2a_bytes(m, c, l, n, a), crosses);
    const double per_layer = 2 * (t_disp + t_comb) +
                             (l.recompute == Recompute::kFull ? t_disp + t_comb : 0.0);
    t.a2a = per_layer * static_cast<double>(Lm) / static_cast<double>(l.pp);
  }
  const double mb_compute = t.fwd + t.bwd + t.recompute;
  if (l.schedule == Schedule::kDualPipe) {
    // Communication of one chunk hides under the computation of the paired chunk; the
    // communication kernels take a share of the compute units meanwhile.
    const double hidden = std::min(t.a2a, mb_compute);
    t.overlap_slowdown = hidden > 0 ? mb_compute * c.eff.overlap_compute_share /
                                          (1.0 - c.eff.overlap_compute_share)
                                    : 0.0;
    t.a2a_exposed = std::max(0.0, t.a2a - mb_compute);
  } else {
    t.a2a_exposed = t.a2a;
  }
  const double M = static_cast<double>(l.num_micro);
  t.compute = M * (mb_compute + t.overlap_slowdown);
  // Pipeline bubble from per-micro-batch stage times (exposed communication travels with F/B).
  const double comm_f = (t.tp_comm + t.a2a_exposed) / 3.0;
  t.bubble = bubble_time(l.schedule, l.pp, l.vpp, t.fwd + comm_f,
                         t.bwd_input + t.recompute + comm_f, t.bwd_weight + comm_f);
  // Pipeline point-to-point: the (tok/tp, D) boundary activation forward and its gradient
  // backward; the steady state overlaps them, warm-up and cool-down do not.
  if (l.pp > 1) {
    const bool inter = l.tp * l.dp >= dpn;
    const double bw = inter ? c.inter_bandwidth * c.eff.inter_comm
                            : c.intra_bandwidth * c.eff.intra_comm;
    const double p2p = tok / l.tp * D * a / bw + (inter ? c.inter_latency : c.intra_latency);
    t.pp_exposed = 2.0 * static_cast<double>(l.pp - 1) * p2p * static_cast<double>(l.vpp);
  }
  // Data parallel: gradients reduce-scattered and parameters all-gathered (ZeRO >= 1), or
  // all-reduced (ZeRO-0), over dp ranks for non-expert and edp ranks for expert parameters.
  // Overlap (Megatron --overlap-grad-reduce/--overlap-param-gather): the reduce-scatter
  // hides under the last micro-batch's backward, the all-gather under the first forward.
  {
    const ParamCounts pc = count_params(m);
    const double p_ne = static_cast<double>(pc.non_expert) / (l.tp * l.pp);
    const double p_ex = static_cast<double>(pc.expert) / (l.ep * l.pp);
    const double gb = a;  // gradients reduced in the activation dtype (bf16; fp32 on CPU)
    const double wb = a;
    auto bw_of = [&](int64_t size, int64_t stride, double* lat) {
      const bool inter = nodes_spanned(size, stride, dpn) > 1;
      *lat = inter ? c.inter_latency : c.intra_latency;
      return inter ? c.inter_bandwidth * c.eff.inter_comm : c.intra_bandwidth * c.eff.intra_comm;
    };
    double lat_ne = 0, lat_ex = 0;
    const double bw_ne = bw_of(l.dp, l.tp, &lat_ne);
    const double bw_ex = bw_of(l.edp(), l.ep, &lat_ex);
    const double rs = ring_time(p_ne * gb, l.dp, bw_ne, lat_ne) +
                      ring_time(p_ex * gb, l.edp(), bw_ex, lat_ex);
    const double ag = ring_time(p_ne * wb, l.dp, bw_ne, lat_ne) +
                      ring_time(p_ex * wb, l.edp(), bw_ex, lat_ex);
    // ZeRO-0 all-reduces (= reduce-scatter + all-gather of the gradients): same volume,
    // but the whole of it follows the last backward.
    t.dp_comm = rs + ag;
    t.dp_exposed = l.zero == 0 ? std::max(0.0, rs + ag - t.bwd)
                               : std::max(0.0, rs - t.bwd) + std::max(0.0, ag - t.fwd);
    // AdamW is memory-bound: read p, g, m, v and write p, m, v (fp32), plus the bf16 copy.
    const double shard_ne = l.zero >= 1 ? p_ne / l.dp : p_ne;
    const double shard_ex = l.zero >= 1 ? p_ex / l.edp() : p_ex;
    const double bytes_per_param = l.dtype == Dtype::kFp32 ? 28.0 : 30.0;
    t.optimizer = (shard_ne + shard_ex) * bytes_per_param / mem_rate;
  }
  t.exposed_comm = M * (t.tp_comm + t.a2a_exposed) + t.dp_exposed + t.pp_exposed;
  t.step = t.compute + t.bubble + t.exposed_comm + t.optimizer;

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
