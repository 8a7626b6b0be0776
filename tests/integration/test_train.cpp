// Whole-program behaviour: determinism of training, the KV-cache decoder against the full
// forward, and the `moe` command's answers to bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/corpus.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "run_binary.h"
#include "tiny_model.h"
#include "train/trainer.h"

namespace moe {
namespace {

using moe::testing::run_moe;
using moe::testing::tiny_moe;

namespace fs = std::filesystem;

TokenData builtin_data() {
  TokenData d;
  d.train = byte_encode(make_builtin_corpus(1, 1 << 16).text);
  d.val = byte_encode(make_builtin_corpus(2, 1 << 12).text);
  return d;
}

std::vector<double> run_losses(int steps) {
  Model m(tiny_moe(256, 64));
  m.init_weights(42);
  TrainConfig tc;
  tc.steps = steps;
  tc.batch = 4;
  tc.seq_len = 64;
  tc.log_every = 1000;
  tc.eval_tokens = 0;
  return train(m, builtin_data(), tc).losses;
}

TEST(Train, SameSeedSameThreadsBitwiseIdentical) {
  const std::vector<double> a = run_losses(20), b = run_losses(20);
  ASSERT_EQ(a.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i;
  EXPECT_LT(a.back(), a.front()) << "loss did not go down in 20 steps";
}

void expect_kv_cache_matches_full_forward(const ModelConfig& cfg) {
  Model m(cfg);
  m.init_weights(5);
  const int64_t T = 24;
  std::vector<int32_t> tokens(T + 1);
  for (int64_t i = 0; i <= T; ++i) tokens[i] = static_cast<int32_t>((i * 37 + 11) % 256);
  m.forward(tokens.data(), 1, T);
  const std::vector<int32_t> ctx(tokens.begin(), tokens.begin() + T);
  const std::vector<float> dec = next_token_logits(m, ctx);
  const float* full = m.logits() + (T - 1) * 256;
  double mx = 0, diff = 0;
  for (int v = 0; v < 256; ++v) {
    mx = std::max(mx, static_cast<double>(std::fabs(full[v])));
    diff = std::max(diff, static_cast<double>(std::fabs(full[v] - dec[v])));
  }
  EXPECT_LE(diff / mx, 1e-5) << "decoder logits differ from the full forward by " << diff;
}

TEST(Generate, KvCacheMatchesFullForward) { expect_kv_cache_matches_full_forward(tiny_moe(256, 64)); }

// MLA (with and without the query latent, v wider than q/k) and an MTP module, which decoding
// does not use: the decoder's logits are the main model's.
TEST(Generate, MlaKvCacheMatchesFullForward) {
  ModelConfig c = tiny_moe(256, 64);
  c.attention = "mla";
  c.num_key_value_heads = c.num_attention_heads;
  c.q_lora_rank = 24;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 8;
  c.head_dim = 8;
  c.v_head_dim = 12;
  c.num_nextn_predict_layers = 1;
  expect_kv_cache_matches_full_forward(c);
  c.q_lora_rank = 0;
  c.v_head_dim = 20;
  expect_kv_cache_matches_full_forward(c);
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moe_cli_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  // Expects a non-zero exit and a single error line mentioning `needle`.
  void expect_error(const std::string& args, const std::string& needle) {
    const auto [code, out] = run_moe(args);
    EXPECT_NE(code, 0) << args;
    EXPECT_NE(out.find(needle), std::string::npos) << "output lacks '" << needle << "':\n" << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "not one line:\n" << out;
  }
  fs::path dir_;
};

TEST_F(Cli, UnknownConfigKey) {
  expect_error("train --config " + write("c.json", R"({"model_type":"moe_cpp","hiden_size":64})"),
               "hiden_size");
}

TEST_F(Cli, TopKLargerThanExperts) {
  expect_error(
      "train --config " + write("c.json", R"({"n_routed_experts":4,"num_experts_per_tok":6})"),
      "num_experts_per_tok");
}

TEST_F(Cli, HeadsNotDividingHidden) {
  expect_error(
      "train --config " + write("c.json", R"({"num_attention_heads":6,"num_key_value_heads":6})"),
      "num_attention_heads");
}

TEST_F(Cli, KvHeadsNotDividingHeads) {
  expect_error(
      "train --config " + write("c.json", R"({"num_attention_heads":4,"num_key_value_heads":3})"),
      "num_key_value_heads");
}

TEST_F(Cli, MissingCheckpoint) {
  expect_error("generate --checkpoint " + (dir_ / "nope").string() + " --prompt hi", "nope");
}

TEST_F(Cli, CorruptCheckpoint) {
  Model m(tiny_moe(256, 64));
  const std::string ck = (dir_ / "ck").string();
  save_checkpoint(ck, m.config(), m.layout(), m.params().data());
  const fs::path st = fs::path(ck) / "model.safetensors";
  fs::resize_file(st, fs::file_size(st) / 2);
  expect_error("eval --checkpoint " + ck + " --data " + write("d.txt", std::string(300, 'a')),
               "model.safetensors");
}

TEST_F(Cli, EvalPrintsJson) {
  Model m(tiny_moe(256, 64));
  m.init_weights(1);
  const std::string ck = (dir_ / "ck").string();
  save_checkpoint(ck, m.config(), m.layout(), m.params().data());
  // 64*3 + 1 bytes: exactly three whole windows of 64.
  const auto [code, out] = run_moe("eval --checkpoint " + ck + " --json --data " +
                                   write("d.txt", std::string(193, 'x')));
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("\"tokens\": 192"), std::string::npos) << out;
  EXPECT_NE(out.find("\"loss\": "), std::string::npos) << out;
}

// Requirement: `moe train` with no arguments ends within 0.15 nats/byte of the corpus floor.
TEST(DefaultRun, ReachesEntropyFloor) {
  const auto [code, out] = run_moe("train --samples 0 --out " +
                                   (fs::temp_directory_path() / "moe_default_run").string());
  ASSERT_EQ(code, 0) << out;
  const size_t p = out.find("held-out: ce ");
  ASSERT_NE(p, std::string::npos) << out;
  double ce = 0, floor = 0, gap = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + p,
                        "held-out: ce %lf nats/token over %*d tokens | entropy "
                        "floor %lf | gap %lf",
                        &ce, &floor, &gap),
            3)
      << out.substr(p);
  EXPECT_NEAR(floor, builtin_corpus_entropy(), 1e-3);
  EXPECT_LE(ce - floor, 0.15) << out.substr(p);
  EXPECT_GE(ce - floor, -0.02) << "below the entropy floor: the floor or the eval is wrong";
}

}  // namespace
}  // namespace moe
