// `moe info CONFIG` run as a program: parameter counts against published figures and against
// model/flops.h, FLOPs, and the memory lines.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "model/flops.h"
#include "run_binary.h"
#include "train/run_config.h"

namespace moe {
namespace {

using moe::testing::run_moe;

namespace fs = std::filesystem;

// "671B" -> 6.71e11 (K, M, B, T suffixes).
double parse_count(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  switch (*end) {
    case 'K':
      v *= 1e3;
      break;
    case 'M':
      v *= 1e6;
      break;
    case 'B':
      v *= 1e9;
      break;
    case 'T':
      v *= 1e12;
      break;
    default:
      break;
  }
  return v;
}

struct Counts {
  double total = 0, active = 0;
};
Counts counts_of(const std::string& out) {
  Counts c;
  const size_t p = out.find("parameters: ");
  if (p == std::string::npos) return c;
  const std::string line = out.substr(p + 12, out.find('\n', p) - p - 12);
  c.total = parse_count(line);
  const size_t a = line.find(", ");
  if (a != std::string::npos) c.active = parse_count(line.substr(a + 2));
  return c;
}

std::string config(const std::string& rel) { return std::string(MOE_SOURCE_DIR) + "/" + rel; }

// "  exact: T total, A active; with MTP T2 total, A2 active" -> {T, A, T2, A2} (0 if absent).
std::array<int64_t, 4> exact_of(const std::string& out) {
  std::array<int64_t, 4> v{0, 0, 0, 0};
  const size_t p = out.find("  exact: ");
  if (p == std::string::npos) return v;
  long long a = 0, b = 0, c = 0, d = 0;
  const int n = std::sscanf(out.c_str() + p,
                            "  exact: %lld total, %lld active; with MTP %lld "
                            "total, %lld active",
                            &a, &b, &c, &d);
  if (n >= 2) v[0] = a, v[1] = b;
  if (n == 4) v[2] = c, v[3] = d;
  return v;
}

TEST(Info, DeepSeekV3IsAbout671BTotalAnd37BActive) {
  const auto [code, out] = run_moe("info " + config("configs/models/deepseek_v3.json"));
  ASSERT_EQ(code, 0) << out;
  const Counts c = counts_of(out);
  // Published: 671B total, 37B activated per token (arXiv 2412.19437, abstract); the weights'
  // README: 36.6B activated, the MTP module 11.5B unique parameters.
  EXPECT_NEAR(c.total, 671e9, 5e9) << out;
  EXPECT_NEAR(c.active, 37e9, 1e9) << out;
  const auto e = exact_of(out);
  EXPECT_NEAR(double(e[1]), 36.6e9, 0.05e9) << out;
  EXPECT_NEAR(double(e[2] - e[0]), 11.5e9, 0.2e9) << out;
  EXPECT_NE(out.find("MLA"), std::string::npos) << out;
  EXPECT_NE(out.find("multi-token-prediction"), std::string::npos) << out;
  EXPECT_NE(out.find("KV cache"), std::string::npos) << out;
  // 682.6B fp32 weights (MTP module included: training holds it) are about 2.48 TiB.
  EXPECT_NE(out.find("params        2.48 TiB"), std::string::npos) << out;
}

// TeleChat3-105B-A4.7B against a count written out from its config's numbers:
//   V 131072, D 2560, L 45 (layer 0 dense F 7680, then 44 MoE), H 32, MLA rq 1536 rkv 512
//   dn 128 dr 64 dv 128, 192 experts of Fe 1536 top-4 + 1 shared, untied head, 1 MTP module.
TEST(Info, TeleChat3CountsMatchAHandCount) {
  const int64_t V = 131072, D = 2560, L = 45, H = 32, rq = 1536, rkv = 512, dn = 128, dr = 64;
  const int64_t dv = 128, F = 7680, Fe = 1536, E = 192, K = 4;
  const int64_t attn = rq * D                 // q_a_proj
                       + rq                   // q_a_layernorm
                       + H * (dn + dr) * rq   // q_b_proj
                       + (rkv + dr) * D       // kv_a_proj_with_mqa
                       + rkv                  // kv_a_layernorm
                       + H * (dn + dv) * rkv  // kv_b_proj
                       + D * H * dv;          // o_proj
  EXPECT_EQ(attn, 29526016);
  const int64_t norms = 2 * D;        // input_layernorm, post_attention_layernorm
  const int64_t expert = 3 * D * Fe;  // gate, up, down
  const int64_t dense_layer = attn + norms + 3 * D * F;
  const int64_t moe_fixed = attn + norms + E * D /* router */ + expert /* shared */;
  const int64_t embed = V * D, head = V * D, final_norm = D;
  const int64_t main_total =
      embed + head + final_norm + dense_layer + (L - 1) * (moe_fixed + E * expert);
  const int64_t main_active = head + final_norm + dense_layer + (L - 1) * (moe_fixed + K * expert);
  const int64_t mtp_fixed = 2 * D /* enorm, hnorm */ + 2 * D * D /* eh_proj */ + D /* head norm */;
  const int64_t mtp_total = mtp_fixed + moe_fixed + E * expert;
  const int64_t mtp_active = mtp_fixed + moe_fixed + K * expert;
  const auto [code, out] = run_moe("info " + config("configs/models/telechat3_105b.json"));
  ASSERT_EQ(code, 0) << out;
  const auto e = exact_of(out);
  EXPECT_EQ(e[0], main_total) << out;
  EXPECT_EQ(e[1], main_active) << out;
  EXPECT_EQ(e[2], main_total + mtp_total) << out;
  EXPECT_EQ(e[3], main_active + mtp_active) << out;
  // The published names: 105B total (with the MTP module), A4.7B (with the embedding row).
  EXPECT_NEAR(double(e[2]), 105e9, 0.5e9) << out;
  EXPECT_NEAR(double(main_active + embed), 4.7e9, 0.05e9) << out;
  EXPECT_NE(out.find("45 layers (1 dense, 44 MoE), hidden 2560, 32 heads (MLA"), std::string::npos)
      << out;
  EXPECT_NE(out.find("192 routed (top-4) + 1 shared"), std::string::npos) << out;
}

// A tiny MLA + MTP config.json: moe info against the hand count of tests/unit/test_layout_mla.cpp
// (main 1580 total, 1260 active; with the MTP module 2502 and 1990).
TEST(Info, TinyMlaMtpCountsMatchAHandCount) {
  const fs::path dir = fs::temp_directory_path() / ("moe_info_mla_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "config.json").string();
  std::ofstream(path) << R"({"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "attention": "mla", "q_lora_rank": 6, "kv_lora_rank": 4,
    "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 3, "intermediate_size": 12,
    "moe_intermediate_size": 4, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
    "num_nextn_predict_layers": 1, "max_position_embeddings": 16})";
  const auto [code, out] = run_moe("info " + path + " --seq-len 6");
  ASSERT_EQ(code, 0) << out;
  const auto e = exact_of(out);
  EXPECT_EQ(e[0], 1580) << out;
  EXPECT_EQ(e[1], 1260) << out;
  EXPECT_EQ(e[2], 2502) << out;
  EXPECT_EQ(e[3], 1990) << out;
  // 3 x 4520 forward FLOPs at seq 6 (the hand count of test_layout_mla.cpp).
  EXPECT_NE(out.find("train 13.6 KFLOP"), std::string::npos) << out;
  fs::remove_all(dir);
}

// A run config: the counts are model/flops.h's, batch and seq come from [train].
TEST(Info, RunConfigMatchesTheEngineCounts) {
  const std::string path = config("configs/tiny.toml");
  const RunConfig rc = load_run_config(path);
  const ParamCounts pc = count_params(rc.model);
  const auto [code, out] = run_moe("info " + path);
  ASSERT_EQ(code, 0) << out;
  const Counts c = counts_of(out);
  EXPECT_NEAR(c.total, double(pc.total), 0.005 * double(pc.total)) << out;
  EXPECT_NEAR(c.active, double(pc.active), 0.005 * double(pc.active)) << out;
  const double train = train_flops_per_token(rc.model, rc.train.seq_len);
  char want[64];
  std::snprintf(want, sizeof want, "train %.2f MFLOP", train / 1e6);
  EXPECT_NE(out.find(want), std::string::npos) << want << " not in\n" << out;
  EXPECT_NE(out.find("per micro-batch of 16 x 128 tokens"), std::string::npos) << out;
  for (const char* line : {"params ", "grads ", "Adam moments ", "activations ", "KV cache "})
    EXPECT_NE(out.find(line), std::string::npos) << line << " missing:\n" << out;
  // --batch and --seq-len override [train].
  const auto [code2, out2] = run_moe("info " + path + " --batch 2 --seq-len 64");
  ASSERT_EQ(code2, 0) << out2;
  EXPECT_NE(out2.find("per micro-batch of 2 x 64 tokens"), std::string::npos) << out2;
  EXPECT_NE(out2.find("at seq 64"), std::string::npos) << out2;
}

// configs/small.toml stays a real MoE and within about 10 minutes of compute on 2 cores: the
// default tiny run sustains 35.9K tok/s x 5.72 MFLOP = 205 GFLOP/s here (README).
TEST(Info, SmallConfigIsARealMoeWithinTenMinutesOfCompute) {
  const RunConfig rc = load_run_config(config("configs/small.toml"));
  const ModelConfig& m = rc.model;
  EXPECT_GE(m.n_routed_experts, 8);
  EXPECT_EQ(m.num_experts_per_tok, 2);
  EXPECT_EQ(m.n_shared_experts, 1);
  EXPECT_EQ(m.first_k_dense_replace, 1);
  EXPECT_GT(m.num_hidden_layers, m.first_k_dense_replace);
  const double tokens = double(rc.train.steps * rc.train.batch * rc.train.seq_len * rc.train.accum);
  const double flops = tokens * train_flops_per_token(m, rc.train.seq_len);
  EXPECT_LT(flops / 205e9, 600.0) << "training alone would take " << flops / 205e9 << " s";
  EXPECT_GT(flops / 205e9, 120.0) << "much less than 10 minutes: the model could be bigger";
  EXPECT_EQ(rc.data.source, "../shared/data/tinyshakespeare.txt");
}

TEST(Info, ErrorsAreOneLine) {
  auto [code, out] = run_moe("info /nonexistent/model.json");
  EXPECT_EQ(code, 1) << out;
  EXPECT_EQ(out.rfind("moe: error: ", 0), 0u) << out;
  std::tie(code, out) = run_moe("info " + config("README.md"));
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find(".toml"), std::string::npos) << out;
}

}  // namespace
}  // namespace moe
