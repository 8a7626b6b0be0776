// The parameter layout and the counts for MLA and multi-token prediction (model/params.h,
// model/flops.h): HF DeepSeek-V3 names and [out, in] shapes, the offsets the engine reads, init
// and decay rules, counts and FLOPs against hand counts, and the GQA layout unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "model/flops.h"
#include "model/params.h"

namespace moe {
namespace {

// V=16, D=8, L=2 (layer 0 dense F=12, layer 1 MoE), H=2, MLA rq=6 rkv=4 dn=2 dr=2 dv=3,
// E=4 experts of Fe=4 top-2 + 1 shared, one MTP module, untied head.
ModelConfig tiny_mla() {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.attention = "mla";
  c.q_lora_rank = 6;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.head_dim = 2;
  c.v_head_dim = 3;
  c.intermediate_size = 12;
  c.moe_intermediate_size = 4;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.first_k_dense_replace = 1;
  c.num_nextn_predict_layers = 1;
  c.max_position_embeddings = 16;
  return c;
}

using Shape = std::vector<int64_t>;
using Named = std::vector<std::pair<std::string, Shape>>;

// The tensors of one block at layer index l as DeepSeek-V3's checkpoint names them.
void add_block(Named& v, int l, bool moe, bool direct_q) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  v.push_back({p + "input_layernorm.weight", {8}});
  if (direct_q) {
    v.push_back({p + "self_attn.q_proj.weight", {2 * (2 + 2), 8}});
  } else {
    v.push_back({p + "self_attn.q_a_proj.weight", {6, 8}});
    v.push_back({p + "self_attn.q_a_layernorm.weight", {6}});
    v.push_back({p + "self_attn.q_b_proj.weight", {2 * (2 + 2), 6}});
  }
  v.push_back({p + "self_attn.kv_a_proj_with_mqa.weight", {4 + 2, 8}});
  v.push_back({p + "self_attn.kv_a_layernorm.weight", {4}});
  v.push_back({p + "self_attn.kv_b_proj.weight", {2 * (2 + 3), 4}});
  v.push_back({p + "self_attn.o_proj.weight", {8, 2 * 3}});
  v.push_back({p + "post_attention_layernorm.weight", {8}});
  if (!moe) {
    v.push_back({p + "mlp.gate_proj.weight", {12, 8}});
    v.push_back({p + "mlp.up_proj.weight", {12, 8}});
    v.push_back({p + "mlp.down_proj.weight", {8, 12}});
    return;
  }
  v.push_back({p + "mlp.gate.weight", {4, 8}});
  v.push_back({p + "mlp.gate.e_score_correction_bias", {4}});
  v.push_back({p + "mlp.shared_experts.gate_proj.weight", {4, 8}});
  v.push_back({p + "mlp.shared_experts.up_proj.weight", {4, 8}});
  v.push_back({p + "mlp.shared_experts.down_proj.weight", {8, 4}});
}

Named expected_names(bool direct_q) {
  Named v;
  v.push_back({"model.embed_tokens.weight", {16, 8}});
  add_block(v, 0, false, direct_q);
  add_block(v, 1, true, direct_q);
  v.push_back({"model.norm.weight", {8}});
  v.push_back({"lm_head.weight", {16, 8}});
  v.push_back({"model.layers.2.enorm.weight", {8}});
  v.push_back({"model.layers.2.hnorm.weight", {8}});
  v.push_back({"model.layers.2.eh_proj.weight", {8, 16}});
  add_block(v, 2, true, direct_q);
  v.push_back({"model.layers.2.shared_head.norm.weight", {8}});
  for (int l : {1, 2})
    for (int e = 0; e < 4; ++e) {
      const std::string q =
          "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(e) + ".";
      v.push_back({q + "gate_proj.weight", {4, 8}});
      v.push_back({q + "up_proj.weight", {4, 8}});
      v.push_back({q + "down_proj.weight", {8, 4}});
    }
  return v;
}

TEST(LayoutMla, NamesShapesAndOrderAreDeepSeekV3s) {
  for (const bool direct_q : {false, true}) {
    ModelConfig c = tiny_mla();
    if (direct_q) c.q_lora_rank = 0;
    const ParamLayout lay = make_layout(c);
    const Named want = expected_names(direct_q);
    ASSERT_EQ(lay.specs.size(), want.size());
    int64_t cursor = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(lay.specs[i].name, want[i].first) << i;
      EXPECT_EQ(lay.specs[i].shape, want[i].second) << want[i].first;
      EXPECT_EQ(lay.specs[i].offset, cursor) << want[i].first;  // contiguous, no gaps
      cursor += lay.specs[i].numel;
      // Layer index: the MTP module's tensors are layer L + k = 2.
      const std::string& n = want[i].first;
      const int64_t layer = n.rfind("model.layers.", 0) == 0 ? n[13] - '0' : -1;
      EXPECT_EQ(lay.specs[i].layer, layer) << n;
    }
    EXPECT_EQ(lay.total_numel, cursor);
    // No shared head or embedding of its own in the MTP module.
    EXPECT_EQ(lay.find("model.layers.2.shared_head.head.weight"), nullptr);
    EXPECT_EQ(lay.find("model.layers.2.embed_tokens.weight"), nullptr);
  }
}

TEST(LayoutMla, OffsetsPointAtTheirTensors) {
  const ModelConfig c = tiny_mla();
  const ParamLayout lay = make_layout(c);
  ASSERT_EQ(lay.layers.size(), 3u);  // 2 main layers + the MTP block
  ASSERT_EQ(lay.mtp.size(), 1u);
  auto at = [&](const std::string& name) {
    const ParamSpec* s = lay.find(name);
    EXPECT_NE(s, nullptr) << name;
    return s ? s->offset : -2;
  };
  for (int l = 0; l < 3; ++l) {
    const LayerOffsets& o = lay.layers[size_t(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(o.input_norm, at(p + "input_layernorm.weight"));
    EXPECT_EQ(o.q_a, at(p + "self_attn.q_a_proj.weight"));
    EXPECT_EQ(o.q_a_norm, at(p + "self_attn.q_a_layernorm.weight"));
    EXPECT_EQ(o.q_b, at(p + "self_attn.q_b_proj.weight"));
    EXPECT_EQ(o.q_proj, -1);
    EXPECT_EQ(o.qkv, -1);
    EXPECT_EQ(o.kv_a, at(p + "self_attn.kv_a_proj_with_mqa.weight"));
    EXPECT_EQ(o.kv_a_norm, at(p + "self_attn.kv_a_layernorm.weight"));
    EXPECT_EQ(o.kv_b, at(p + "self_attn.kv_b_proj.weight"));
    EXPECT_EQ(o.o_proj, at(p + "self_attn.o_proj.weight"));
    EXPECT_EQ(o.post_norm, at(p + "post_attention_layernorm.weight"));
    if (l == 0) {
      EXPECT_EQ(o.mlp_gu, at(p + "mlp.gate_proj.weight"));
      EXPECT_EQ(at(p + "mlp.up_proj.weight"), o.mlp_gu + 12 * 8);  // gate|up adjacent
      EXPECT_EQ(o.mlp_down, at(p + "mlp.down_proj.weight"));
      EXPECT_EQ(o.router, -1);
    } else {
      EXPECT_EQ(o.router, at(p + "mlp.gate.weight"));
      EXPECT_EQ(o.bias, at(p + "mlp.gate.e_score_correction_bias"));
      EXPECT_EQ(o.shared_gu, at(p + "mlp.shared_experts.gate_proj.weight"));
      EXPECT_EQ(o.shared_down, at(p + "mlp.shared_experts.down_proj.weight"));
      EXPECT_EQ(o.experts, at(p + "mlp.experts.0.gate_proj.weight"));
      EXPECT_EQ(at(p + "mlp.experts.3.gate_proj.weight"), o.experts + 3 * lay.expert_block);
      EXPECT_GE(o.experts, lay.expert_begin);
    }
  }
  const MtpOffsets& m = lay.mtp[0];
  EXPECT_EQ(m.enorm, at("model.layers.2.enorm.weight"));
  EXPECT_EQ(m.hnorm, at("model.layers.2.hnorm.weight"));
  EXPECT_EQ(m.eh_proj, at("model.layers.2.eh_proj.weight"));
  EXPECT_EQ(m.head_norm, at("model.layers.2.shared_head.norm.weight"));
  EXPECT_LT(m.head_norm, lay.replicated_numel);
  // Direct q_proj when q_lora_rank is null.
  ModelConfig d = c;
  d.q_lora_rank = 0;
  const ParamLayout ld = make_layout(d);
  EXPECT_EQ(ld.layers[1].q_proj, ld.find("model.layers.1.self_attn.q_proj.weight")->offset);
  EXPECT_EQ(ld.layers[1].q_a, -1);
  EXPECT_EQ(ld.layers[1].q_a_norm, -1);
  EXPECT_EQ(ld.layers[1].q_b, -1);
}

TEST(LayoutMla, InitDecayAndRegions) {
  const ModelConfig c = tiny_mla();
  const ParamLayout lay = make_layout(c);
  const double sd = c.initializer_range, sd_out = sd / std::sqrt(2.0 * 2);
  for (const ParamSpec& s : lay.specs) {
    const bool norm =
        s.name.size() > 11 && s.name.compare(s.name.size() - 11, 11, "norm.weight") == 0;
    const bool bias = s.name.find("e_score_correction_bias") != std::string::npos;
    const bool out =
        s.name.find("o_proj") != std::string::npos || s.name.find("down_proj") != std::string::npos;
    EXPECT_EQ(s.decay, !norm && !bias) << s.name;
    EXPECT_EQ(s.init_one, norm) << s.name;
    EXPECT_EQ(s.trainable, !bias) << s.name;
    const double want = norm || bias ? 0.0 : out ? sd_out : sd;
    EXPECT_DOUBLE_EQ(s.init_std, want) << s.name;
    EXPECT_EQ(s.region == Region::kExpert, s.expert >= 0) << s.name;
    EXPECT_EQ(s.region == Region::kExpert, s.offset >= lay.expert_begin) << s.name;
  }
  EXPECT_DOUBLE_EQ(lay.find("model.layers.2.eh_proj.weight")->init_std, sd);
  // Expert parallelism holds a slice of every MoE layer's experts, MTP blocks included.
  LayoutOptions ep;
  ep.expert_first = 2, ep.expert_count = 2, ep.align = 16;
  const ParamLayout part = make_layout(c, ep);
  EXPECT_NE(part.find("model.layers.2.mlp.experts.3.down_proj.weight"), nullptr);
  EXPECT_EQ(part.find("model.layers.2.mlp.experts.1.down_proj.weight"), nullptr);
  EXPECT_EQ(part.expert_begin % 16, 0);
  EXPECT_EQ(part.total_numel - part.expert_begin, 2 * 2 * lay.expert_block);
}

// Hand count of tiny_mla():
//   attention per block: q_a 6*8=48 + q_a_layernorm 6 + q_b 2*(2+2)*6=48 + kv_a (4+2)*8=48
//     + kv_a_layernorm 4 + kv_b 2*(2+3)*4=40 + o 8*2*3=48 = 242; + 2 norms of 8
//   layer 0: 242+16 + dense 3*8*12=288 = 546
//   layer 1: 242+16 + router 4*8=32 + shared 3*8*4=96 + 4 experts * 96 = 770 (+4 bias, untrained)
//   ends: embed 16*8=128, lm_head 128, model.norm 8 = 264     main total 264+546+770 = 1580
//   MTP: enorm 8 + hnorm 8 + eh_proj 8*16=128 + block 770 + shared_head.norm 8 = 922
//   total 2502; layout floats 2502 + 2 balancing biases of 4 = 2510
//   active: minus the embedding lookup 128 and 2 unused experts * 96 per MoE block
//     main 1580-128-192 = 1260; with MTP 2502-128-384 = 1990
TEST(CountsMla, ParametersMatchAHandCountAndTheLayout) {
  const ModelConfig c = tiny_mla();
  EXPECT_EQ(attn_params(c), 242);
  EXPECT_EQ(attn_matmul_params(c), 232);
  EXPECT_EQ(mtp_extra_params(c), 152);
  const ParamCounts p = count_params(c);
  EXPECT_EQ(p.total, 2502);
  EXPECT_EQ(p.active, 1990);
  EXPECT_EQ(p.embedding, 256);
  EXPECT_EQ(p.routed_experts, 2 * 384);
  EXPECT_EQ(make_layout(c).total_numel, 2502 + 8);
  ModelConfig main = c;
  main.num_nextn_predict_layers = 0;
  EXPECT_EQ(count_params(main).total, 1580);
  EXPECT_EQ(count_params(main).active, 1260);
  // q_lora_rank null: q_proj 2*(2+2)*8 = 64 replaces 48 + 6 + 48.
  ModelConfig d = c;
  d.q_lora_rank = 0;
  EXPECT_EQ(attn_params(d), 242 - 102 + 64);
  // Every config: the counted total is the layout's trainable floats.
  for (ModelConfig x : {c, d, main, ModelConfig{}}) {
    int64_t trained = 0;
    for (const ParamSpec& s : make_layout(x).specs) trained += s.trainable ? s.numel : 0;
    EXPECT_EQ(count_params(x).total, trained);
  }
}

// Forward FLOPs per token at T = 6 (multiply-add = 2):
//   dense: 3 blocks * 2*232 + dense FFN 2*288 + 2 MoE blocks * shared 2*96 + eh_proj 2*128
//          = 1392 + 576 + 384 + 256 = 2608
//   experts: 2 MoE blocks * K=2 * 2*96 = 768
//   heads: main + MTP 2 * 2*16*8 = 512, routers 2 * 2*32 = 128 -> 640
//   attention core: 3 blocks * 2*T*H*(dqk + dv) = 3 * 2*6*2*(4+3) = 504 (causal: 252)
TEST(CountsMla, FlopsMatchAHandCount) {
  const ModelConfig c = tiny_mla();
  EXPECT_DOUBLE_EQ(attn_core_flops_per_token_layer(c, 6, false), 168.0);
  const TokenFlops f = forward_flops_per_token(c, 6, false);
  EXPECT_DOUBLE_EQ(f.dense_gemm, 2608.0);
  EXPECT_DOUBLE_EQ(f.expert_gemm, 768.0);
  EXPECT_DOUBLE_EQ(f.head_gemm, 640.0);
  EXPECT_DOUBLE_EQ(f.attn_core, 504.0);
  EXPECT_DOUBLE_EQ(forward_flops_per_token(c, 6, true).attn_core, 252.0);
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, 6), 3 * 4520.0);
}

// FNV-1a over everything make_layout decides for a GQA layout: every spec and the offsets that
// existed before MLA/MTP.
uint64_t layout_fingerprint(const ParamLayout& lay) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  };
  auto num = [&](double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.17g", v);
    mix(b);
  };
  for (const ParamSpec& s : lay.specs) {
    mix(s.name);
    for (int64_t d : s.shape) num(double(d));
    for (double v :
         {double(s.offset), double(s.numel), double(int(s.region)), double(s.layer),
          double(s.expert), double(s.decay), double(s.trainable), s.init_std, double(s.init_one)})
      num(v);
  }
  for (const LayerOffsets& o : lay.layers)
    for (int64_t v : {o.input_norm, o.post_norm, o.qkv, o.o_proj, o.mlp_gu, o.mlp_down, o.router,
                      o.bias, o.shared_gu, o.shared_down, o.experts})
      num(double(v));
  for (int64_t v : {lay.embed, lay.final_norm, lay.lm_head, lay.replicated_numel, lay.total_numel,
                    lay.expert_block, lay.expert_first, lay.experts_local, lay.expert_begin})
    num(double(v));
  return h;
}

// The fingerprints were computed with main's make_layout before MLA/MTP (commit 0b19cb1) on the
// same configs: GQA without MTP keeps its layout to the float, so old checkpoints load.
TEST(LayoutMla, GqaLayoutIsUnchanged) {
  ModelConfig d;
  d.vocab_size = 300, d.hidden_size = 48, d.num_hidden_layers = 3, d.num_attention_heads = 6;
  d.num_key_value_heads = 3, d.head_dim = 8, d.intermediate_size = 80;
  d.moe_intermediate_size = 24, d.n_routed_experts = 16, d.n_shared_experts = 2;
  d.num_experts_per_tok = 4, d.n_group = 4, d.topk_group = 2, d.first_k_dense_replace = 1;
  d.scoring_func = "sigmoid", d.tie_word_embeddings = true, d.initializer_range = 0.006;
  LayoutOptions ep;
  ep.expert_first = 4, ep.expert_count = 8, ep.align = 64;
  ModelConfig m;
  m.n_shared_experts = 0, m.first_k_dense_replace = 0, m.num_hidden_layers = 2;
  EXPECT_EQ(layout_fingerprint(make_layout(ModelConfig{})), 0xcf14478257059375ull);
  EXPECT_EQ(layout_fingerprint(make_layout(d)), 0xd2adb7f9df168d02ull);
  EXPECT_EQ(layout_fingerprint(make_layout(d, ep)), 0xcc0992680f035603ull);
  EXPECT_EQ(layout_fingerprint(make_layout(m)), 0x0b072b0e6a08af80ull);
  // And no MLA or MTP entries appear for them.
  const ParamLayout lay = make_layout(d);
  EXPECT_TRUE(lay.mtp.empty());
  EXPECT_EQ(lay.layers.size(), 3u);
  for (const LayerOffsets& o : lay.layers) EXPECT_EQ(o.kv_a, -1);
}

}  // namespace
}  // namespace moe
