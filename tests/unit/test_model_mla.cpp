// The whole model with MLA attention and MTP modules: gradients of the new paths against finite
// differences of the model's own loss, the MTP modules leaving the main model untouched, the
// low-precision GEMMs covering the new projections, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "model/model.h"

namespace moe {
namespace {

// Small MLA + MTP model with a smooth loss: every expert selected (K = E), so no top-k choice
// flips under a perturbation; a dense first layer, a MoE second layer, two MTP modules.
ModelConfig smooth_config(int64_t q_lora_rank, int64_t mtp) {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.attention = "mla";
  c.q_lora_rank = q_lora_rank;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.head_dim = 4;
  c.v_head_dim = 6;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 8;
  c.n_routed_experts = 2;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "softmax";
  c.z_loss_coef = 1e-2;
  c.max_position_embeddings = 16;
  c.initializer_range = 0.2;
  c.num_nextn_predict_layers = mtp;
  c.mtp_loss_weight = 0.5;
  return c;
}

std::vector<int32_t> tokens(int64_t B, int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<int32_t> t(size_t(B * (T + 1)));
  for (auto& x : t) x = int32_t(gen() % uint32_t(V));
  return t;
}

// For each tensor: the directional derivative g . d of the loss along d = g / rms(g) + noise
// against central differences of forward()'s loss (an f32 model, so steps of ~1% of the
// tensor's scale, extrapolated, and a 0.3% bound; the measured errors are printed).
void check_directional(int64_t q_lora_rank, const std::vector<std::string>& names) {
  Model m(smooth_config(q_lora_rank, 2));
  m.init_weights(3);
  const int64_t B = 2, T = 8;
  const auto tok = tokens(B, T, m.config().vocab_size, 4);
  m.zero_grads();
  m.forward_backward(tok.data(), B, T);
  const std::vector<float> g = m.grads();
  std::mt19937 gen(5);
  std::normal_distribution<double> noise(0.0, 1.0);
  double worst = 0;
  for (const std::string& name : names) {
    const ParamSpec* s = m.layout().find(name);
    ASSERT_NE(s, nullptr) << name;
    double gss = 0, pss = 0;
    for (int64_t i = 0; i < s->numel; ++i) {
      gss += double(g[s->offset + i]) * g[s->offset + i];
      pss += double(m.params()[s->offset + i]) * m.params()[s->offset + i];
    }
    const double grms = std::sqrt(gss / double(s->numel));
    ASSERT_GT(grms, 0) << name << " has an all-zero gradient";
    std::vector<double> d(size_t(s->numel));
    double analytic = 0;
    for (int64_t i = 0; i < s->numel; ++i) {
      d[i] = g[s->offset + i] / grms + 0.5 * noise(gen);
      analytic += d[i] * g[s->offset + i];
    }
    const double h = 1e-2 * std::sqrt(pss / double(s->numel));
    const std::vector<float> p0 = m.params();
    auto loss_at = [&](double t) {
      for (int64_t i = 0; i < s->numel; ++i)
        m.params()[s->offset + i] = float(double(p0[s->offset + i]) + t * d[i]);
      const double l = m.forward(tok.data(), B, T).loss;
      m.params() = p0;
      return l;
    };
    // central differences at h and h/2, Richardson-extrapolated (cancels the h^2 term)
    const double d1 = (loss_at(h) - loss_at(-h)) / (2 * h);
    const double d2 = (loss_at(h / 2) - loss_at(-h / 2)) / h;
    const double numeric = (4 * d2 - d1) / 3;
    const double rel = std::fabs(numeric - analytic) / std::max(std::fabs(analytic), 1e-12);
    worst = std::max(worst, rel);
    if (std::getenv("MOE_GRADCHECK_VERBOSE"))
      std::printf("  %-50s analytic %+.6e numeric %+.6e rel %.1e\n", name.c_str(), analytic,
                  numeric, rel);
    EXPECT_LE(rel, 3e-3) << name << ": analytic " << analytic << " numeric " << numeric;
  }
  std::printf(
      "[gradcheck] MLA+MTP model (q_lora_rank %lld): %zu tensors, worst relative "
      "error of the directional derivative %.2e\n",
      static_cast<long long>(q_lora_rank), names.size(), worst);
}

TEST(ModelMla, GradientsMatchFiniteDifferences) {
  // layer 0 (dense), layer 1 (MoE), MTP module 0 (layer 2) and 1 (layer 3), shared tensors
  std::vector<std::string> names = {"model.embed_tokens.weight", "lm_head.weight",
                                    "model.norm.weight"};
  for (int l : {0, 1, 2, 3}) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* t : {"self_attn.q_a_proj.weight", "self_attn.q_a_layernorm.weight",
                          "self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
                          "self_attn.kv_a_layernorm.weight", "self_attn.kv_b_proj.weight",
                          "self_attn.o_proj.weight", "input_layernorm.weight"})
      names.push_back(p + t);
  }
  for (int l : {2, 3}) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* t :
         {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
          "mlp.gate.weight", "mlp.experts.1.down_proj.weight", "mlp.shared_experts.up_proj.weight"})
      names.push_back(p + t);
  }
  check_directional(8, names);
}

TEST(ModelMla, GradientsMatchFiniteDifferencesWithoutQueryLatent) {
  std::vector<std::string> names;
  for (int l : {1, 2})
    for (const char* t : {"self_attn.q_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
                          "self_attn.kv_b_proj.weight"})
      names.push_back("model.layers." + std::to_string(l) + "." + t);
  check_directional(0, names);
}

// MTP modules add training signal only: the main model's logits and cross-entropy are those of
// the same weights without them (what eval and generation use).
TEST(ModelMla, MtpModulesLeaveTheMainModelUnchanged) {
  Model with(smooth_config(8, 2)), without(smooth_config(8, 0));
  with.init_weights(7);
  for (const ParamSpec& s : without.layout().specs) {
    const ParamSpec* w = with.layout().find(s.name);
    ASSERT_NE(w, nullptr) << s.name;
    std::copy(with.params().begin() + w->offset, with.params().begin() + w->offset + s.numel,
              without.params().begin() + s.offset);
  }
  const int64_t B = 2, T = 10, V = with.config().vocab_size;
  const auto tok = tokens(B, T, V, 8);
  const LossStats a = with.forward(tok.data(), B, T);
  const LossStats b = without.forward(tok.data(), B, T);
  EXPECT_EQ(a.ce, b.ce);
  for (int64_t i = 0; i < B * T * V; ++i) ASSERT_EQ(with.logits()[i], without.logits()[i]) << i;
  ASSERT_EQ(a.mtp_ce.size(), 2u);
  EXPECT_TRUE(b.mtp_ce.empty());
  EXPECT_GT(a.mtp, 0);
  EXPECT_NEAR(a.mtp, 0.5 / 2 * (a.mtp_ce[0] + a.mtp_ce[1]), 1e-12);
  // the MTP block's MoE terms come on top of the main model's
  EXPECT_NEAR(a.loss, a.ce + a.mtp + a.aux + a.seq_aux + a.z, 1e-12);
  EXPECT_GT(a.z, b.z);
  EXPECT_EQ(a.mtp_positions, B * (T - 1));
  EXPECT_GE(a.mtp_hits, 0);
  EXPECT_LE(a.mtp_hits, a.mtp_positions);
  EXPECT_LE(a.mtp_agree, a.mtp_positions);
  // the balancing loads cover the MTP blocks (layer indices L + k)
  EXPECT_EQ(with.load().size(), 4u);
  EXPECT_EQ(with.load()[3].size(), 2u);
  EXPECT_EQ(with.load()[3][0] + with.load()[3][1], 2 * B * (T - 2));  // K = 2 of E = 2
}

// MTP module 0's acceptance counts, recomputed from its logits.
TEST(ModelMla, MtpAcceptanceCountsMatchTheLogits) {
  Model m(smooth_config(8, 1));
  m.init_weights(9);
  const int64_t B = 3, T = 7, V = m.config().vocab_size;
  const auto tok = tokens(B, T, V, 10);
  const LossStats st = m.forward(tok.data(), B, T);
  auto argmax = [&](const float* row) { return int32_t(std::max_element(row, row + V) - row); };
  int64_t hits = 0, agree = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const int32_t p = argmax(m.mtp_logits(0) + (b * (T - 1) + t) * V);
      hits += p == tok[size_t(b * (T + 1) + t + 2)];
      agree += p == argmax(m.logits() + (b * T + t + 1) * V);
    }
  EXPECT_EQ(st.mtp_positions, B * (T - 1));
  EXPECT_EQ(st.mtp_hits, hits);
  EXPECT_EQ(st.mtp_agree, agree);
}

// bf16 GEMMs cast the MLA and MTP projections (and recast them after the masters change).
TEST(ModelMla, Bf16CastsTheNewProjections) {
  Model m(smooth_config(8, 2));
  // every [out, in] matrix but the embedding, the head and the routers is a linear weight
  int linear = 0;
  for (const ParamSpec& s : m.layout().specs) {
    if (s.shape.size() != 2 || s.name.find("mlp.gate.") != std::string::npos ||
        s.name == "model.embed_tokens.weight" || s.name == "lm_head.weight")
      continue;
    EXPECT_TRUE(is_linear_weight(s)) << s.name;
    ++linear;
  }
  EXPECT_EQ(linear, 4 * 5 + 2 + 3 * (3 + 2 * 3) + 3);  // attention, eh_proj, FFNs, dense FFN
  m.init_weights(11);
  const int64_t B = 2, T = 8;
  const auto tok = tokens(B, T, m.config().vocab_size, 12);
  for (int pass = 0; pass < 2; ++pass) {
    m.set_compute_dtype(ComputeDtype::kF32);
    const LossStats f = m.forward(tok.data(), B, T);
    m.set_compute_dtype(ComputeDtype::kBF16);
    const LossStats h = m.forward(tok.data(), B, T);
    EXPECT_NEAR(h.ce, f.ce, 3e-3 * f.ce) << "pass " << pass;
    for (size_t k = 0; k < f.mtp_ce.size(); ++k)
      EXPECT_NEAR(h.mtp_ce[k], f.mtp_ce[k], 3e-3 * f.mtp_ce[k]) << "pass " << pass << " k " << k;
    EXPECT_NE(h.loss, f.loss);
    for (float& p : m.params()) p *= 1.5f;  // the second pass must see the new weights
  }
}

TEST(ModelMla, SequenceTooShortForMtpNamesTheFix) {
  Model m(smooth_config(8, 2));
  const auto tok = tokens(1, 2, m.config().vocab_size, 13);
  try {
    m.forward(tok.data(), 1, 2);
    FAIL() << "T = 2 accepted with 2 MTP modules";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("num_nextn_predict_layers = 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least 3"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace moe
