// MLA, multi-token prediction and DeepSeek-V3 config.json keys (model/config.h): parsing, the
// rules that decide attention, the HF-only keys, validation messages and exact round trips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"
#include "train/run_config.h"

namespace moe {
namespace {

std::string parse_error(const std::string& text) {
  try {
    parse_config(text, "test.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_MSG(msg, ...)                                                            \
  do {                                                                                  \
    const std::string m_ = (msg);                                                       \
    EXPECT_EQ(m_.rfind("[config]", 0), 0u) << m_;                                       \
    for (const char* part : {__VA_ARGS__})                                              \
      EXPECT_NE(m_.find(part), std::string::npos) << "'" << part << "' not in: " << m_; \
  } while (0)

// A small MLA + MTP config in our own format.
nlohmann::json mla_json() {
  return nlohmann::json::parse(R"({
    "hidden_size": 64, "num_attention_heads": 4, "attention": "mla", "q_lora_rank": 24,
    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "num_nextn_predict_layers": 2,
    "mtp_loss_weight": 0.1})");
}
std::string mla_error(const nlohmann::json& extra) {
  nlohmann::json j = mla_json();
  j.update(extra);
  return parse_error(j.dump());
}

// A small DeepSeek-V3-format config.json: the release's keys (HF-only ones included), small sizes.
nlohmann::json deepseek_json() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "attention_bias": false, "attention_dropout": 0.0, "auto_map": {"AutoConfig": "x.Y"},
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
    "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.02, "intermediate_size": 96, "kv_lora_rank": 16,
    "max_position_embeddings": 128, "moe_intermediate_size": 32, "moe_layer_freq": 1,
    "n_group": 2, "n_routed_experts": 8, "n_shared_experts": 1, "norm_topk_prob": true,
    "num_attention_heads": 4, "num_experts_per_tok": 2, "num_hidden_layers": 3,
    "num_key_value_heads": 4, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
    "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 10000, "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid", "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1,
    "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
    "use_cache": true, "v_head_dim": 12, "vocab_size": 256})");
}
std::string deepseek_error(const nlohmann::json& extra, const char* drop = nullptr) {
  nlohmann::json j = deepseek_json();
  j.update(extra);
  if (drop) j.erase(drop);
  return parse_error(j.dump());
}

TEST(ConfigMla, OurFormatParses) {
  const ModelConfig c = parse_config(mla_json().dump(), "x");
  EXPECT_TRUE(c.is_mla());
  EXPECT_TRUE(c.needs_mla_engine());
  EXPECT_EQ(c.q_lora_rank, 24);
  EXPECT_EQ(c.kv_lora_rank, 16);
  EXPECT_EQ(c.qk_head_dim(), 12);
  EXPECT_EQ(c.v_dim(), 12);
  EXPECT_EQ(c.head_dim, 4);             // derived: the RoPE width, as HF's DeepseekV3Config
  EXPECT_EQ(c.num_key_value_heads, 4);  // derived: every head its own k, v
  EXPECT_EQ(c.num_nextn_predict_layers, 2);
  EXPECT_DOUBLE_EQ(c.mtp_loss_weight, 0.1);
  EXPECT_DOUBLE_EQ(c.attn_softmax_scale(), 1.0 / std::sqrt(12.0));
  // q_lora_rank null (and 0, how we write it): a direct q_proj.
  nlohmann::json j = mla_json();
  j["q_lora_rank"] = nullptr;
  EXPECT_EQ(parse_config(j.dump(), "x").q_lora_rank, 0);
  j["q_lora_rank"] = 0;
  EXPECT_EQ(parse_config(j.dump(), "x").q_lora_rank, 0);
  // Defaults: GQA, no MTP, the engine's current path.
  const ModelConfig d;
  EXPECT_FALSE(d.is_mla());
  EXPECT_FALSE(d.needs_mla_engine());
  EXPECT_EQ(d.qk_head_dim(), d.head_dim);
  EXPECT_DOUBLE_EQ(d.attn_softmax_scale(), 1.0 / std::sqrt(double(d.head_dim)));
  ModelConfig mtp_only;
  mtp_only.num_nextn_predict_layers = 1;
  EXPECT_TRUE(mtp_only.needs_mla_engine());
}

TEST(ConfigMla, RoundTripIsExact) {
  for (const bool direct_q : {false, true}) {
    nlohmann::json j = mla_json();
    if (direct_q) j["q_lora_rank"] = nullptr;
    const ModelConfig c = parse_config(j.dump(), "x");
    const std::string text = config_to_json(c);
    const ModelConfig back = parse_config(text, "rt");
    EXPECT_EQ(config_to_json(back), text);
    EXPECT_EQ(back.attention, "mla");
    EXPECT_EQ(back.q_lora_rank, c.q_lora_rank);
    EXPECT_EQ(back.kv_lora_rank, 16);
    EXPECT_EQ(back.qk_nope_head_dim, 8);
    EXPECT_EQ(back.qk_rope_head_dim, 4);
    EXPECT_EQ(back.v_head_dim, 12);
    EXPECT_EQ(back.head_dim, 4);
    EXPECT_EQ(back.num_nextn_predict_layers, 2);
    EXPECT_EQ(back.mtp_loss_weight, 0.1);
    // Written without nulls (the resolved run config is TOML): 0 is "none".
    EXPECT_EQ(text.find("null"), std::string::npos) << text;
    const auto path = std::filesystem::temp_directory_path() /
                      ("moe_cfg_mla_" + std::to_string(::getpid()) + ".json");
    save_config(c, path.string());
    EXPECT_EQ(config_to_json(load_config(path.string())), text);
    std::filesystem::remove(path);
  }
  // A DeepSeek-V3 config.json comes back as itself minus the HF-only keys.
  const ModelConfig ds = parse_config(deepseek_json().dump(), "ds");
  const ModelConfig back = parse_config(config_to_json(ds), "rt");
  EXPECT_EQ(config_to_json(back), config_to_json(ds));
  EXPECT_EQ(back.model_type, "deepseek_v3");
}

TEST(ConfigMla, SerializesTheNewKeys) {
  const auto j = nlohmann::json::parse(config_to_json(ModelConfig{}));
  EXPECT_EQ(j.at("attention"), "gqa");
  for (const char* k : {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                        "v_head_dim", "num_nextn_predict_layers"})
    EXPECT_EQ(j.at(k), 0) << k;
  EXPECT_EQ(j.at("mtp_loss_weight"), 0.3);
}

TEST(ConfigMla, DeepSeekV3ConfigJsonLoads) {
  const ModelConfig c = parse_config(deepseek_json().dump(), "ds");
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.attention, "mla");  // implied by model_type
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.n_group, 2);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  // seq_aux = true: DeepSeek's aux_loss_alpha is the sequence-wise coefficient.
  EXPECT_DOUBLE_EQ(c.seq_aux_alpha, 0.001);
  EXPECT_DOUBLE_EQ(c.aux_loss_alpha, 0.0);
  // seq_aux = false keeps it batch-level; absent scoring_func is DeepSeek-V3's sigmoid.
  nlohmann::json j = deepseek_json();
  j["seq_aux"] = false;
  j.erase("scoring_func");
  const ModelConfig b = parse_config(j.dump(), "ds");
  EXPECT_DOUBLE_EQ(b.aux_loss_alpha, 0.001);
  EXPECT_DOUBLE_EQ(b.seq_aux_alpha, 0.0);
  EXPECT_EQ(b.scoring_func, "sigmoid");
  // transformers' own dump adds head_dim (= qk_rope_head_dim), qk_head_dim, rope_interleave.
  j = deepseek_json();
  j["head_dim"] = 4;
  j["qk_head_dim"] = 12;
  j["rope_interleave"] = false;
  EXPECT_NO_THROW(parse_config(j.dump(), "ds"));
}

TEST(ConfigMla, DeepSeekV3Errors) {
  EXPECT_MSG(deepseek_error({{"attention", "gqa"}}), "test.json", "deepseek_v3",
             "attention = \"gqa\"", "MLA", "remove \"attention\"");
  EXPECT_MSG(deepseek_error(nlohmann::json::object(), "kv_lora_rank"), "without kv_lora_rank (HF default 512)",
             "write them in config.json");
  EXPECT_MSG(deepseek_error(nlohmann::json::object(), "n_group"), "n_group (HF default 8)");
  EXPECT_MSG(deepseek_error({{"rope_scaling", {{"type", "yarn"}, {"factor", 40}}}}), "rope_scaling",
             "yarn", "YaRN", "\"rope_scaling\": null");
  EXPECT_MSG(deepseek_error({{"rope_interleave", true}}), "rope_interleave = true", "rotate_half",
             "permute");
  EXPECT_MSG(deepseek_error({{"hidden_act", "gelu"}}), "hidden_act = \"gelu\"", "silu");
  EXPECT_MSG(deepseek_error({{"attention_bias", true}}), "attention_bias = true");
  EXPECT_MSG(deepseek_error({{"moe_layer_freq", 2}}), "moe_layer_freq = 2");
  EXPECT_MSG(deepseek_error({{"attention_dropout", 0.1}}), "attention_dropout = 0.1");
  EXPECT_MSG(deepseek_error({{"topk_method", "group_limited_greedy"}}),
             "topk_method = \"group_limited_greedy\"", "noaux_tc");
  EXPECT_MSG(deepseek_error({{"topk_method", "greedy"}}), "\"greedy\"", "n_group = 2");
  EXPECT_MSG(deepseek_error({{"quantization_config", {{"quant_method", "fp8"}}}}),
             "quantization_config", "f32");
  EXPECT_MSG(deepseek_error({{"qk_head_dim", 13}}), "qk_head_dim = 13", "= 12");
  EXPECT_MSG(deepseek_error({{"seq_aux_alpha", 0.01}}), "seq_aux = true", "seq_aux_alpha = 0.01");
  EXPECT_MSG(deepseek_error({{"seq_aux", 1}}), "seq_aux = 1", "true or false");
  EXPECT_MSG(deepseek_error({{"model_type", "deepseek_v4"}}), "deepseek_v4", "moe_cpp");
  // Unknown keys are still errors, with a suggestion among ours and the HF ones.
  EXPECT_MSG(deepseek_error({{"kv_lora_rnak", 16}}), "unknown key 'kv_lora_rnak'",
             "did you mean 'kv_lora_rank'");
  EXPECT_MSG(deepseek_error({{"rope_interlave", false}}), "did you mean 'rope_interleave'");
  // The informational keys take any value.
  EXPECT_TRUE(deepseek_error({{"torch_dtype", "float32"}, {"ep_size", 64}}).empty());
}

TEST(ConfigMla, ContradictionsAndRangesNameTheKeyAndTheFix) {
  // MLA keys without attention = "mla" (moe_cpp never implies it).
  EXPECT_MSG(parse_error(R"({"kv_lora_rank": 512})"), "test.json", "kv_lora_rank = 512",
             "attention = \"gqa\"", "\"attention\": \"mla\"");
  EXPECT_MSG(parse_error(R"({"q_lora_rank": 64})"), "q_lora_rank = 64", "MLA size");
  // attention = "mla" without its sizes.
  for (const char* key : {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"}) {
    nlohmann::json j = mla_json();
    j.erase(key);
    EXPECT_MSG(parse_error(j.dump()), "attention = \"mla\" needs", key, ">= 1");
    j[key] = nullptr;
    EXPECT_MSG(parse_error(j.dump()), "attention = \"mla\" needs", key);
  }
  EXPECT_MSG(mla_error({{"qk_rope_head_dim", 5}}), "qk_rope_head_dim = 5", "even");
  EXPECT_MSG(mla_error({{"head_dim", 8}}), "head_dim = 8", "contradicts qk_rope_head_dim = 4",
             "\"head_dim\": 4");
  EXPECT_MSG(mla_error({{"num_key_value_heads", 2}}), "num_key_value_heads = 2",
             "num_attention_heads = 4", "\"num_key_value_heads\": 4");
  EXPECT_MSG(mla_error({{"kv_lora_rank", -3}}), "kv_lora_rank = -3");
  EXPECT_MSG(mla_error({{"kv_lora_rank", "16"}}), "'kv_lora_rank'", "integer or null");
  EXPECT_MSG(mla_error({{"attention", "mha"}}), "attention = \"mha\"", "\"gqa\"", "\"mla\"");
  EXPECT_MSG(mla_error({{"num_nextn_predict_layers", -1}}), "num_nextn_predict_layers = -1",
             "[0, max_position_embeddings");
  EXPECT_MSG(mla_error({{"num_nextn_predict_layers", 256}}), "num_nextn_predict_layers = 256");
  EXPECT_MSG(mla_error({{"mtp_loss_weight", -0.5}}), "mtp_loss_weight = -0.5", ">= 0");
  EXPECT_MSG(mla_error({{"mtp_loss_weight", "0.3"}}), "'mtp_loss_weight'", "a number");
  // Allowed: head_dim and num_key_value_heads given and agreeing; MTP with GQA.
  EXPECT_TRUE(mla_error({{"head_dim", 4}, {"num_key_value_heads", 4}}).empty());
  EXPECT_TRUE(parse_error(R"({"num_nextn_predict_layers": 3})").empty());
  // validate() on a struct, as the trainer does for built-in configs.
  ModelConfig v;
  v.kv_lora_rank = 8;
  EXPECT_THROW(v.validate(), Error);
  v = ModelConfig{};
  v.attention = "mla";
  EXPECT_THROW(v.validate(), Error);
  v.kv_lora_rank = 8, v.qk_nope_head_dim = 8, v.qk_rope_head_dim = 4, v.v_head_dim = 8;
  v.head_dim = 4, v.num_key_value_heads = v.num_attention_heads;
  EXPECT_NO_THROW(v.validate());
  v.model_type = "deepseek_v3";
  EXPECT_NO_THROW(v.validate());
  v.attention = "gqa", v.kv_lora_rank = 0, v.qk_nope_head_dim = 0, v.qk_rope_head_dim = 0;
  v.v_head_dim = 0, v.head_dim = 32;
  EXPECT_THROW(v.validate(), Error);  // deepseek_v3 is MLA
}

// The TeleChat3-shaped run config: TOML keys reach the same parser.
TEST(ConfigMla, TeleChat3SmallRunConfigLoads) {
  const RunConfig rc =
      load_run_config(std::string(MOE_SOURCE_DIR) + "/configs/telechat3_small.toml");
  const ModelConfig& m = rc.model;
  EXPECT_TRUE(m.is_mla());
  EXPECT_GT(m.q_lora_rank, 0);
  EXPECT_EQ(m.num_nextn_predict_layers, 1);
  EXPECT_GT(m.n_group, 1);
  EXPECT_LT(m.topk_group, m.n_group);
  EXPECT_EQ(m.scoring_func, "sigmoid");
  EXPECT_GT(m.routed_scaling_factor, 1.0);
  EXPECT_TRUE(m.needs_mla_engine());
  EXPECT_EQ(rc.data.source, "../shared/data/tinyshakespeare.txt");
}

}  // namespace
}  // namespace moe
