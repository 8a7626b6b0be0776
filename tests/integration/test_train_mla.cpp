// A DeepSeek-V3-format config.json (MLA, MTP, group-limited sigmoid routing; small sizes) goes
// through the `moe` command: it trains, logs the MTP acceptance at evaluation, evaluates and
// generates. In-process: the loss of a fixed batch falls
// under AdamW, and the checkpoint round-trips with its MLA and MTP tensors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/rng.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "run_binary.h"
#include "train/optimizer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using moe::testing::run_moe;

// As Hugging Face writes a DeepseekV3 config.json (transformers' keys, null rope_scaling), small.
const char* kDeepSeekV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 0,
  "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 1, "hidden_act": "silu",
  "hidden_size": 48, "initializer_range": 0.02, "intermediate_size": 96, "kv_lora_rank": 16,
  "max_position_embeddings": 64, "moe_intermediate_size": 24, "moe_layer_freq": 1, "n_group": 2,
  "n_routed_experts": 8, "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 4,
  "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 4,
  "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 24, "qk_nope_head_dim": 8,
  "qk_rope_head_dim": 4, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 10000,
  "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 1, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 12, "vocab_size": 256})";

class TrainMla : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moe_train_mla_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "config.json") << kDeepSeekV3;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(TrainMla, DeepSeekV3ConfigJsonTrainsThroughTheCli) {
  const std::string run = (dir_ / "run").string();
  const auto [code, out] = run_moe("train --config " + (dir_ / "config.json").string() +
                                   " --steps 60 --batch 4 --seq-len 32 --samples 0 --out " + run +
                                   " --train.eval_every 30");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("MTP next-next token: right"), std::string::npos) << out;
  // Two held-out records with the MTP acceptance; the held-out loss falls between them.
  std::ifstream metrics(fs::path(run) / "metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> val;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("kind", "") == "val") val.push_back(j);
  }
  ASSERT_EQ(val.size(), 2u) << out;
  for (const auto& v : val) {
    ASSERT_TRUE(v.contains("mtp_acc")) << v.dump();
    EXPECT_GT(v["mtp_acc"].get<double>(), 0.0);
    EXPECT_LT(v["mtp_acc"].get<double>(), 1.0);
    EXPECT_GT(v["mtp_agree"].get<double>(), 0.0);
  }
  EXPECT_LT(val[1]["loss"].get<double>(), val[0]["loss"].get<double>() - 0.3) << out;
  EXPECT_GT(val[1]["mtp_acc"].get<double>(), val[0]["mtp_acc"].get<double>());
  // The run folder's config keeps the MLA and MTP keys; eval and generate run.
  const ModelConfig saved = load_config((fs::path(run) / "config.json").string());
  EXPECT_TRUE(saved.is_mla());
  EXPECT_EQ(saved.q_lora_rank, 24);
  EXPECT_EQ(saved.num_nextn_predict_layers, 1);
  std::ofstream(dir_ / "text.txt") << std::string(2000, 'a');
  const auto [ecode, eout] = run_moe("eval --checkpoint " + run + " --json --seq-len 32 --data " +
                                     (dir_ / "text.txt").string());
  EXPECT_EQ(ecode, 0) << eout;
  EXPECT_NE(eout.find("\"loss\": "), std::string::npos) << eout;
  const auto [gcode, gout] =
      run_moe("generate --checkpoint " + run + " --prompt hi --max-new-tokens 20");
  EXPECT_EQ(gcode, 0) << gout;
  EXPECT_GE(gout.size(), 20u) << gout;
}

TEST_F(TrainMla, FixedBatchLossFallsAndCheckpointRoundTrips) {
  const ModelConfig c = load_config((dir_ / "config.json").string());
  Model m(c);
  m.init_weights(1);
  const int64_t B = 2, T = 24;
  std::vector<int32_t> tok(size_t(B * (T + 1)));
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(uniform01(5, 0, i) * 256) % 256;
  AdamW opt(m.layout(), AdamWConfig{3e-3, 0.9, 0.95, 1e-8, 0.1});
  double first = 0, last = 0, first_mtp = 0, last_mtp = 0;
  for (int s = 0; s < 30; ++s) {
    m.zero_grads();
    const LossStats st = m.forward_backward(tok.data(), B, T);
    ASSERT_EQ(st.mtp_ce.size(), 1u);
    if (s == 0) first = st.loss, first_mtp = st.mtp_ce[0];
    last = st.loss, last_mtp = st.mtp_ce[0];
    opt.step(m.params().data(), m.grads().data(), 3e-3);
    m.update_balance_biases();
  }
  EXPECT_LT(last, 0.7 * first);
  EXPECT_LT(last_mtp, 0.7 * first_mtp) << "the MTP module does not learn";
  // save and load: the same tensors (names from DeepSeek-V3) and the same loss
  const std::string ck = (dir_ / "ck").string();
  save_checkpoint(ck, m.config(), m.layout(), m.params().data());
  ModelConfig cfg;
  std::vector<float> params;
  load_checkpoint(ck, &cfg, &params);
  Model back(cfg);
  back.params() = params;
  EXPECT_EQ(back.params(), m.params());
  EXPECT_NE(back.layout().find("model.layers.2.eh_proj.weight"), nullptr);
  EXPECT_NE(back.layout().find("model.layers.1.self_attn.kv_a_proj_with_mqa.weight"), nullptr);
  EXPECT_EQ(back.forward(tok.data(), B, T).loss, m.forward(tok.data(), B, T).loss);
}

}  // namespace
}  // namespace moe
