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

TEST(Info, DeepSeekV3IsAbout671BTotalAnd37BActive) {
  const auto [code, out] = run_moe("info " + config("configs/models/deepseek_v3.json"));
  ASSERT_EQ(code, 0) << out;
  const Counts c = counts_of(out);
  // Published: 671B total, 37B activated per token (arXiv 2412.19437, abstract).
  EXPECT_NEAR(c.total, 671e9, 5e9) << out;
  EXPECT_NEAR(c.active, 37e9, 1e9) << out;
  EXPECT_NE(out.find("MLA"), std::string::npos) << out;
  EXPECT_NE(out.find("multi-token-prediction"), std::string::npos) << out;
  EXPECT_NE(out.find("KV cache"), std::string::npos) << out;
  // 671B fp32 weights are about 2.44 TiB.
  EXPECT_NE(out.find("params        2.44 TiB"), std::string::npos) << out;
}

TEST(Info, TeleChatLikeIsAbout105B) {
  const auto [code, out] = run_moe("info " + config("configs/models/telechat3_105b_like.json"));
  ASSERT_EQ(code, 0) << out;
  const Counts c = counts_of(out);
  EXPECT_NEAR(c.total, 105e9, 3e9) << out;
  EXPECT_LT(c.active, 0.1 * c.total) << out;
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
