// PyTorch parity (DESIGN.md section 4): our checkpoint and batch go to an independent PyTorch
// implementation (tests/reference/reference.py, Debian's python3-torch); it writes logits, loss,
// every gradient and the losses of ten AdamW steps, and we compare.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "../integration/tiny_model.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";
constexpr int kSteps = 10;
const AdamWConfig kAdam{1e-3, 0.9, 0.95, 1e-8, 0.1};

bool torch_available() {
  static const bool ok =
      std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
  return ok;
}

// max |a - b| / max |b|: the error relative to the reference's largest magnitude.
double rel_err(const float* a, const float* b, int64_t n, int64_t* where = nullptr) {
  double mx = 0, diff = 0;
  for (int64_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(b[i])));
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (d > diff) {
      diff = d;
      if (where) *where = i;
    }
  }
  return mx > 0 ? diff / mx : diff;
}

struct Case {
  const char* name;
  ModelConfig cfg;
  float bias_std;  // nonzero: random balancing bias in the checkpoint
};
// Test names and ctest listings show the case's name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

ModelConfig base_config() {
  ModelConfig c = moe::testing::tiny_dims();
  c.vocab_size = 256;
  c.initializer_range = 0.1;  // larger than usual so routing and attention are far from uniform
  return c;
}

Case mixtral_like() {
  ModelConfig c = base_config();
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 0;
  c.first_k_dense_replace = 0;
  c.scoring_func = "softmax";
  return {"mixtral_like", c, 0.0f};
}

Case deepseek_like() {
  ModelConfig c = base_config();
  c.num_hidden_layers = 3;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.aux_loss_alpha = 0.01;
  c.seq_aux_alpha = 0.001;
  c.z_loss_coef = 0.001;
  c.bias_update_rate = 0.001;
  return {"deepseek_like", c, 0.05f};
}

Case capacity_drop() {
  ModelConfig c = base_config();
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "softmax";
  c.capacity_factor = 1.0;
  c.aux_loss_alpha = 0.01;
  return {"capacity_drop", c, 0.0f};
}

// DeepSeek-V3 group-limited routing: 16 experts in 4 groups of 4, each token's top-4 from
// its best 2 groups (by the sum of each group's top-2 s + b), with a moving balancing bias.
Case group_limited() {
  ModelConfig c = base_config();
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 0;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.bias_update_rate = 0.001;
  return {"group_limited", c, 0.05f};
}

// TeleChat3 / DeepSeek-V3 architecture (make_fixture.py preset "mla_mtp"): MLA with a compressed
// query and decoupled RoPE (dn 6 + dr 4, dv 8), two sequential MTP modules, group-limited
// sigmoid routing with a moving balancing bias and the sequence-wise balance loss.
Case mla_mtp() {
  ModelConfig c = base_config();
  c.num_key_value_heads = c.num_attention_heads;
  c.attention = "mla";
  c.q_lora_rank = 16;
  c.kv_lora_rank = 12;
  c.qk_nope_head_dim = 6;
  c.qk_rope_head_dim = 4;
  c.head_dim = 4;
  c.v_head_dim = 8;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.seq_aux_alpha = 0.001;
  c.bias_update_rate = 0.001;
  c.num_nextn_predict_layers = 2;
  c.mtp_loss_weight = 0.3;
  return {"mla_mtp", c, 0.05f};
}

// MLA without the query latent (q_proj), a value head wider than the query/key head (dv 12 >
// dn 4 + dr 4: the packed heads are dv wide and q is rescaled), one MTP module, tied
// embeddings (the MTP head's gradient lands in the embedding table too).
Case mla_direct_q() {
  ModelConfig c = base_config();
  c.num_key_value_heads = c.num_attention_heads;
  c.attention = "mla";
  c.q_lora_rank = 0;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.head_dim = 4;
  c.v_head_dim = 12;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "softmax";
  c.aux_loss_alpha = 0.01;
  c.tie_word_embeddings = true;
  c.num_nextn_predict_layers = 1;
  c.mtp_loss_weight = 0.5;
  return {"mla_direct_q", c, 0.0f};
}

class Parity : public ::testing::TestWithParam<Case> {};

TEST_P(Parity, MatchesPyTorch) {
  if (!torch_available()) GTEST_SKIP() << kPython << " cannot import torch: apt-get install python3-torch";
  const Case& tc = GetParam();
  const fs::path dir = fs::temp_directory_path() /
                       ("moe_parity_" + std::string(tc.name) + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  Model model(tc.cfg);
  model.init_weights(7);
  if (tc.bias_std > 0) {
    // every MoE layer: the main ones and the MTP blocks (layer index L + k)
    for (int64_t l = 0; l < tc.cfg.num_hidden_layers + tc.cfg.num_nextn_predict_layers; ++l) {
      if (!tc.cfg.is_moe_layer(l)) continue;
      float* b = model.params().data() + model.layout().layers[l].bias;
      for (int64_t e = 0; e < tc.cfg.n_routed_experts; ++e)
        b[e] = tc.bias_std * static_cast<float>(normal01(3, 100 + l, e));
    }
  }
  save_checkpoint((dir / "ckpt").string(), tc.cfg, model.layout(), model.params().data());

  const int64_t B = 4, T = 16;
  std::vector<int32_t> tokens(B * (T + 1));
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>(uniform01(11, 0, i) * tc.cfg.vocab_size) % 256;
  write_safetensors((dir / "batch.safetensors").string(),
                    {{"tokens", "I32", {B, T + 1}, tokens.data()}});

  const std::string cmd = std::string(kPython) + " " MOE_SOURCE_DIR "/tests/reference/reference.py" +
                          " --checkpoint " + (dir / "ckpt").string() + " --batch " +
                          (dir / "batch.safetensors").string() + " --out " +
                          (dir / "ref.safetensors").string() + " --steps " +
                          std::to_string(kSteps) + " --lr " + std::to_string(kAdam.lr) +
                          " --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --dtype float64";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "reference failed: " << cmd;
  const SafetensorsFile ref = read_safetensors((dir / "ref.safetensors").string());

  // 1. logits and loss of the initial weights.
  const LossStats fwd = model.forward(tokens.data(), B, T);
  const std::vector<float> ref_logits = ref.at("logits").as_f32("logits");
  ASSERT_EQ(static_cast<int64_t>(ref_logits.size()), B * T * tc.cfg.vocab_size);
  int64_t at = 0;
  const double e_logits = rel_err(model.logits(), ref_logits.data(), ref_logits.size(), &at);
  EXPECT_LE(e_logits, 1e-5) << "logits differ, largest at " << at << ": ours "
                            << model.logits()[at] << " torch " << ref_logits[at];
  const double ref_loss = ref.at("loss").as_f64("loss")[0];
  EXPECT_LE(std::fabs(fwd.loss - ref_loss) / std::fabs(ref_loss), 1e-5)
      << "loss ours " << fwd.loss << " torch " << ref_loss;
  // the MTP modules' logits and cross-entropies
  const int64_t M = tc.cfg.num_nextn_predict_layers;
  double e_mtp = 0;  // largest over the modules
  ASSERT_EQ(static_cast<int64_t>(fwd.mtp_ce.size()), M);
  if (M > 0) {
    const std::vector<float> ref_mtp_ce = ref.at("mtp_ce").as_f32("mtp_ce");
    ASSERT_EQ(static_cast<int64_t>(ref_mtp_ce.size()), M);
    for (int64_t k = 0; k < M; ++k) {
      const std::string key = "mtp_logits." + std::to_string(k);
      const std::vector<float> rl = ref.at(key).as_f32(key);
      ASSERT_EQ(static_cast<int64_t>(rl.size()), B * (T - 1 - k) * tc.cfg.vocab_size) << key;
      const double e = rel_err(model.mtp_logits(k), rl.data(), rl.size(), &at);
      e_mtp = std::max(e_mtp, e);
      EXPECT_LE(e, 1e-5) << key << " differ, largest at " << at << ": ours "
                         << model.mtp_logits(k)[at] << " torch " << rl[at];
      EXPECT_LE(std::fabs(fwd.mtp_ce[k] - ref_mtp_ce[k]) / std::fabs(ref_mtp_ce[k]), 1e-5)
          << "mtp_ce[" << k << "] ours " << fwd.mtp_ce[k] << " torch " << ref_mtp_ce[k];
    }
    EXPECT_EQ(fwd.mtp_positions, B * (T - 1));
  }
  if (tc.cfg.capacity_factor > 0) {
    EXPECT_GT(fwd.dropped, 0) << "no token was dropped";
  }
  model.reset_load();

  // 2. every gradient, relative to its largest magnitude.
  model.zero_grads();
  const LossStats fb = model.forward_backward(tokens.data(), B, T);
  EXPECT_LE(std::fabs(fb.loss - ref_loss) / std::fabs(ref_loss), 1e-5);
  model.reset_load();
  int checked = 0;
  double worst_grad = 0;
  std::string worst_name;
  for (const ParamSpec& s : model.layout().specs) {
    if (!s.trainable) continue;
    const std::string key = "grad." + s.name;
    ASSERT_TRUE(ref.has(key)) << "reference did not write " << key;
    const std::vector<float> g = ref.at(key).as_f32(key);
    ASSERT_EQ(static_cast<int64_t>(g.size()), s.numel) << key;
    const float* ours = model.grads().data() + s.offset;
    const double e = rel_err(ours, g.data(), s.numel, &at);
    EXPECT_LE(e, 1e-4) << s.name << ": largest difference at " << at << ": ours " << ours[at]
                       << " torch " << g[at];
    if (e >= worst_grad) worst_grad = e, worst_name = s.name;
    ++checked;
  }
  EXPECT_GT(checked, 10);

  // 3. ten AdamW steps on the same batch (with the auxiliary-loss-free bias update).
  const std::vector<double> ref_steps = ref.at("step_losses").as_f64("step_losses");
  ASSERT_EQ(static_cast<int>(ref_steps.size()), kSteps);
  AdamW opt(model.layout(), kAdam);
  double worst_step = 0;
  for (int s = 0; s < kSteps; ++s) {
    model.zero_grads();
    const LossStats st = model.forward_backward(tokens.data(), B, T);
    const double e = std::fabs(st.loss - ref_steps[s]) / std::fabs(ref_steps[s]);
    worst_step = std::max(worst_step, e);
    EXPECT_LE(e, 1e-4) << "step " << s << ": ours " << st.loss << " torch " << ref_steps[s];
    opt.step(model.params().data(), model.grads().data(), kAdam.lr);
    model.update_balance_biases();
  }
  char mtp[64] = "";
  if (M > 0) std::snprintf(mtp, sizeof mtp, ", MTP logits %.2e", e_mtp);
  std::printf("[parity] %s: logits %.2e%s, %d gradients max %.2e (%s), %d AdamW step losses "
              "max %.2e (relative errors)\n",
              tc.name, e_logits, mtp, checked, worst_grad, worst_name.c_str(), kSteps,
              worst_step);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Configs, Parity,
                         ::testing::Values(mixtral_like(), deepseek_like(), capacity_drop(),
                                           group_limited(), mla_mtp(), mla_direct_q()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace moe
