// The whole model with its weight GEMMs in bf16 and emulated FP8 (model/gemms.h) against the
// same model in f32: loss and every gradient within stated bounds, f32 state untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/quantize.h"
#include "model/model.h"

namespace moe {
namespace {

// Dimensions over 128 so that FP8 tiles and blocks have tails (160 = 128 + 32), a dense first
// layer, routed and shared experts, GQA.
ModelConfig config(bool tied) {
  ModelConfig c;
  c.hidden_size = 160;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 40;
  c.intermediate_size = 200;
  c.moe_intermediate_size = 136;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  return c;
}

struct Pass {
  double loss;
  std::vector<float> grads;
};

Pass run(Model& m, ComputeDtype d, const std::vector<int32_t>& tok, int64_t B, int64_t T) {
  m.set_compute_dtype(d);
  m.zero_grads();
  const LossStats st = m.forward_backward(tok.data(), B, T, 1.0f);
  return {st.loss, m.grads()};
}

// ||a - b|| / ||b|| over one parameter's gradient.
double rel_err(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void expect_tracks_f32(bool tied) {
  Model m(config(tied));
  m.init_weights(5);
  const int64_t B = 2, T = 48;
  std::vector<int32_t> tok(size_t(B * (T + 1)));
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 131 + 7) % 256);
  const std::vector<float> params = m.params();
  const Pass f32 = run(m, ComputeDtype::kF32, tok, B, T);
  const Pass bf = run(m, ComputeDtype::kBF16, tok, B, T);
  const Pass f8 = run(m, ComputeDtype::kFP8, tok, B, T);
  EXPECT_EQ(m.params(), params) << "low-precision passes must not touch the f32 masters";
  // Bounds: bf16 rounds each GEMM input by <= 2^-9 relative, FP8 E4M3 by <= 2^-4 (16 times
  // more); a gradient passes through several GEMMs and sums terms that cancel, so the relative
  // errors allowed are a few times those (measured here: bf16 <= 0.8%; FP8 6-12% for every
  // tensor outside the MoE FFNs). The MoE FFNs' FP8 gradients (router, experts, and the norm in
  // front of them) also move by whole tokens: a perturbed router input flips some top-k choices,
  // so they get a wider bound (measured 16-34%).
  EXPECT_NEAR(bf.loss, f32.loss, 2e-3 * f32.loss);
  EXPECT_NEAR(f8.loss, f32.loss, 2e-2 * f32.loss);
  double worst_bf = 0, worst_f8 = 0, worst_f8_dense = 0;
  std::string worst_bf_name, worst_f8_name, worst_f8_dense_name;
  const auto in_moe_ffn = [&](const std::string& name) {
    for (int64_t l = m.config().first_k_dense_replace; l < m.config().num_hidden_layers; ++l) {
      const std::string layer = "model.layers." + std::to_string(l) + ".";
      if (name.rfind(layer + "mlp.", 0) == 0 || name == layer + "post_attention_layernorm.weight")
        return true;
    }
    return false;
  };
  for (const ParamSpec& s : m.layout().specs) {
    if (!s.trainable) continue;
    const double eb = rel_err(bf.grads.data() + s.offset, f32.grads.data() + s.offset, s.numel);
    const double e8 = rel_err(f8.grads.data() + s.offset, f32.grads.data() + s.offset, s.numel);
    if (eb > worst_bf) worst_bf = eb, worst_bf_name = s.name;
    if (e8 > worst_f8) worst_f8 = e8, worst_f8_name = s.name;
    if (!in_moe_ffn(s.name) && e8 > worst_f8_dense)
      worst_f8_dense = e8, worst_f8_dense_name = s.name;
  }
  EXPECT_LT(worst_bf, 0.02) << "bf16: worst gradient " << worst_bf_name;
  EXPECT_LT(worst_f8_dense, 0.15) << "fp8: worst gradient outside the MoE FFNs "
                                  << worst_f8_dense_name;
  EXPECT_LT(worst_f8, 0.5) << "fp8: worst gradient " << worst_f8_name;
  EXPECT_GT(worst_f8, worst_bf) << "FP8 should be coarser than bf16; is FP8 quantizing at all?";
  EXPECT_GT(worst_bf, 0.0) << "bf16 gave the f32 gradients bit for bit; is it casting at all?";
  std::printf(
      "relative gradient error vs f32 (tied=%d): bf16 %.2e (%s), fp8 %.2e (%s), fp8 outside the "
      "MoE FFNs %.2e (%s); loss f32 %.6f bf16 %.6f fp8 %.6f\n",
      int(tied), worst_bf, worst_bf_name.c_str(), worst_f8, worst_f8_name.c_str(), worst_f8_dense,
      worst_f8_dense_name.c_str(), f32.loss, bf.loss, f8.loss);
}

TEST(LowPrecisionModel, Bf16AndFp8LossAndEveryGradientTrackF32) { expect_tracks_f32(false); }
TEST(LowPrecisionModel, TiedHeadTracksF32Too) { expect_tracks_f32(true); }

TEST(LowPrecisionModel, WeightsAreRecastAfterTheMastersChange) {
  // The bf16 copies follow an optimizer step (the masters changing between passes): the
  // second pass must see the new weights, as the f32 model does.
  Model m(config(false));
  m.init_weights(6);
  const int64_t B = 1, T = 32;
  std::vector<int32_t> tok(size_t(B * (T + 1)));
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 29 + 3) % 256);
  m.set_compute_dtype(ComputeDtype::kBF16);
  const double before = m.forward(tok.data(), B, T).loss;
  for (float& p : m.params()) p *= 0.5f;
  const double after_bf = m.forward(tok.data(), B, T).loss;
  m.set_compute_dtype(ComputeDtype::kF32);
  const double after_f32 = m.forward(tok.data(), B, T).loss;
  EXPECT_NE(before, after_bf);
  EXPECT_NEAR(after_bf, after_f32, 2e-3 * after_f32);
}

TEST(LowPrecisionModel, UnknownDtypeNamesTheValueAndTheChoices) {
  try {
    parse_compute_dtype("fp16", "[train] dtype");
    FAIL() << "fp16 accepted";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[train] dtype = \"fp16\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("bf16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("fp8"), std::string::npos) << msg;
  }
  EXPECT_EQ(parse_compute_dtype("bf16"), ComputeDtype::kBF16);
  EXPECT_EQ(parse_compute_dtype("fp8"), ComputeDtype::kFP8);
  EXPECT_EQ(parse_compute_dtype("fp32"), ComputeDtype::kF32);
}

}  // namespace
}  // namespace moe
