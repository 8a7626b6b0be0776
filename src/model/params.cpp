#include "model/params.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moe {

const ParamSpec* ParamLayout::find(const std::string& name) const {
  for (const auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

namespace {

struct Builder {
  ParamLayout& out;
  int64_t cursor = 0;

  int64_t add(std::string name, std::vector<int64_t> shape, Region region, int64_t layer,
              int64_t expert, double std, bool decay = true, bool one = false,
              bool trainable = true) {
    ParamSpec s;
    s.name = std::move(name);
    s.shape = std::move(shape);
    s.numel = 1;
    for (int64_t d : s.shape) s.numel *= d;
    s.offset = cursor;
    s.region = region;
    s.layer = layer;
    s.expert = expert;
    s.init_std = std;
    s.decay = decay;
    s.init_one = one;
    s.trainable = trainable;
    cursor += s.numel;
    out.specs.push_back(s);
    return s.offset;
  }
};

}  // namespace

namespace {

// The replicated tensors of one transformer block at layer index l (a main layer or an MTP
// block): norms, attention, post-attention norm, and the dense FFN or the MoE's router, bias and
// shared experts. Routed experts go to the expert region later.
void add_block(Builder& b, const ModelConfig& c, int64_t l, LayerOffsets& o, double sd,
               double sd_out) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t Dh = c.head_dim, F = c.intermediate_size, E = c.n_routed_experts;
  const int64_t Fs = c.shared_width();
  const auto R = Region::kReplicated;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  o.input_norm = b.add(p + "input_layernorm.weight", {D}, R, l, -1, 0, false, true);
  if (!c.is_mla()) {
    o.qkv = b.add(p + "self_attn.q_proj.weight", {H * Dh, D}, R, l, -1, sd);
    b.add(p + "self_attn.k_proj.weight", {Hkv * Dh, D}, R, l, -1, sd);
    b.add(p + "self_attn.v_proj.weight", {Hkv * Dh, D}, R, l, -1, sd);
    o.o_proj = b.add(p + "self_attn.o_proj.weight", {D, H * Dh}, R, l, -1, sd_out);
  } else {
    const int64_t rq = c.q_lora_rank, rkv = c.kv_lora_rank, dr = c.qk_rope_head_dim;
    const int64_t dqk = c.qk_head_dim(), dn = c.qk_nope_head_dim, dv = c.v_head_dim;
    if (rq > 0) {
      o.q_a = b.add(p + "self_attn.q_a_proj.weight", {rq, D}, R, l, -1, sd);
      o.q_a_norm = b.add(p + "self_attn.q_a_layernorm.weight", {rq}, R, l, -1, 0, false, true);
      o.q_b = b.add(p + "self_attn.q_b_proj.weight", {H * dqk, rq}, R, l, -1, sd);
    } else {
      o.q_proj = b.add(p + "self_attn.q_proj.weight", {H * dqk, D}, R, l, -1, sd);
    }
    o.kv_a = b.add(p + "self_attn.kv_a_proj_with_mqa.weight", {rkv + dr, D}, R, l, -1, sd);
    o.kv_a_norm = b.add(p + "self_attn.kv_a_layernorm.weight", {rkv}, R, l, -1, 0, false, true);
    o.kv_b = b.add(p + "self_attn.kv_b_proj.weight", {H * (dn + dv), rkv}, R, l, -1, sd);
    o.o_proj = b.add(p + "self_attn.o_proj.weight", {D, H * dv}, R, l, -1, sd_out);
  }
  o.post_norm = b.add(p + "post_attention_layernorm.weight", {D}, R, l, -1, 0, false, true);
  if (!c.is_moe_layer(l)) {
    o.mlp_gu = b.add(p + "mlp.gate_proj.weight", {F, D}, R, l, -1, sd);
    b.add(p + "mlp.up_proj.weight", {F, D}, R, l, -1, sd);
    o.mlp_down = b.add(p + "mlp.down_proj.weight", {D, F}, R, l, -1, sd_out);
    return;
  }
  o.router = b.add(p + "mlp.gate.weight", {E, D}, R, l, -1, sd);
  o.bias = b.add(p + "mlp.gate.e_score_correction_bias", {E}, R, l, -1, 0, false, false, false);
  if (Fs > 0) {
    o.shared_gu = b.add(p + "mlp.shared_experts.gate_proj.weight", {Fs, D}, R, l, -1, sd);
    b.add(p + "mlp.shared_experts.up_proj.weight", {Fs, D}, R, l, -1, sd);
    o.shared_down = b.add(p + "mlp.shared_experts.down_proj.weight", {D, Fs}, R, l, -1, sd_out);
  }
}

}  // namespace

ParamLayout make_layout(const ModelConfig& c, const LayoutOptions& opt) {
  ParamLayout lay;
  Builder b{lay};
  const int64_t D = c.hidden_size, Fe = c.moe_intermediate_size, E = c.n_routed_experts;
  const int64_t L = c.num_hidden_layers, M = c.num_nextn_predict_layers;
  const double sd = c.initializer_range;
  const double sd_out = sd / std::sqrt(2.0 * static_cast<double>(L));  // o_proj, down_proj
  const auto R = Region::kReplicated;

  lay.embed = b.add("model.embed_tokens.weight", {c.vocab_size, D}, R, -1, -1, sd);
  lay.layers.resize(L + M);
  for (int64_t l = 0; l < L; ++l) add_block(b, c, l, lay.layers[l], sd, sd_out);
  lay.final_norm = b.add("model.norm.weight", {D}, R, -1, -1, 0, false, true);
  lay.lm_head =
      c.tie_word_embeddings ? lay.embed : b.add("lm_head.weight", {c.vocab_size, D}, R, -1, -1, sd);
  // MTP modules: layer index L + k, embedding and head shared with the main model.
  lay.mtp.resize(M);
  for (int64_t k = 0; k < M; ++k) {
    const int64_t l = L + k;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    MtpOffsets& m = lay.mtp[k];
    m.enorm = b.add(p + "enorm.weight", {D}, R, l, -1, 0, false, true);
    m.hnorm = b.add(p + "hnorm.weight", {D}, R, l, -1, 0, false, true);
    m.eh_proj = b.add(p + "eh_proj.weight", {D, 2 * D}, R, l, -1, sd);
    add_block(b, c, l, lay.layers[l], sd, sd_out);
    m.head_norm = b.add(p + "shared_head.norm.weight", {D}, R, l, -1, 0, false, true);
  }
  const int64_t align = std::max<int64_t>(1, opt.align);
  auto round_up = [&](int64_t n) { return (n + align - 1) / align * align; };
  lay.replicated_numel = b.cursor;
  b.cursor = lay.expert_begin = round_up(b.cursor);

  // Expert region: per MoE layer (main layers, then MTP blocks), E contiguous blocks of gate
  // [Fe,D], up [Fe,D], down [D,Fe] (only experts [expert_first, expert_first + experts_local)
  // with expert parallelism).
  const int64_t count = opt.expert_count < 0 ? E : opt.expert_count;
  MOE_CHECK(opt.expert_first >= 0 && count >= 0 && opt.expert_first + count <= E, "layout",
            "experts [", opt.expert_first, ", ", opt.expert_first + count,
            ") are not inside the model's n_routed_experts = ", E);
  lay.expert_first = opt.expert_first;
  lay.experts_local = count;
  lay.expert_block = 3 * Fe * D;
  for (int64_t l = 0; l < L + M; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts.";
    lay.layers[l].experts = b.cursor;
    for (int64_t e = opt.expert_first; e < opt.expert_first + count; ++e) {
      const std::string q = p + std::to_string(e) + ".";
      b.add(q + "gate_proj.weight", {Fe, D}, Region::kExpert, l, e, sd);
      b.add(q + "up_proj.weight", {Fe, D}, Region::kExpert, l, e, sd);
      b.add(q + "down_proj.weight", {D, Fe}, Region::kExpert, l, e, sd_out);
    }
  }
  lay.total_numel = round_up(b.cursor);
  return lay;
}

bool is_linear_weight(const ParamSpec& spec) {
  auto ends_with = [&](const std::string& tail) {
    return spec.name.size() > tail.size() &&
           spec.name.compare(spec.name.size() - tail.size(), tail.size(), tail) == 0;
  };
  // MLA's kv_a_proj_with_mqa is the one projection whose name does not end in _proj.
  return spec.shape.size() == 2 && (ends_with("_proj.weight") || ends_with("_proj_with_mqa.weight"));
}

}  // namespace moe
