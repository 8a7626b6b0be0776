#include "model/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {
namespace {

bool same(const ModelConfig& a, const ModelConfig& b) {
  return config_to_json(a) == config_to_json(b) && a.model_type == b.model_type &&
         a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads &&
         a.num_key_value_heads == b.num_key_value_heads && a.head_dim == b.head_dim &&
         a.intermediate_size == b.intermediate_size &&
         a.moe_intermediate_size == b.moe_intermediate_size &&
         a.n_routed_experts == b.n_routed_experts && a.n_shared_experts == b.n_shared_experts &&
         a.num_experts_per_tok == b.num_experts_per_tok && a.n_group == b.n_group &&
         a.topk_group == b.topk_group &&
         a.first_k_dense_replace == b.first_k_dense_replace && a.scoring_func == b.scoring_func &&
         a.norm_topk_prob == b.norm_topk_prob &&
         a.routed_scaling_factor == b.routed_scaling_factor && a.rms_norm_eps == b.rms_norm_eps &&
         a.rope_theta == b.rope_theta && a.max_position_embeddings == b.max_position_embeddings &&
         a.tie_word_embeddings == b.tie_word_embeddings && a.aux_loss_alpha == b.aux_loss_alpha &&
         a.seq_aux_alpha == b.seq_aux_alpha && a.z_loss_coef == b.z_loss_coef &&
         a.bias_update_rate == b.bias_update_rate && a.capacity_factor == b.capacity_factor &&
         a.initializer_range == b.initializer_range;
}

// The message of the Error thrown by parse_config(text), or "" if none.
std::string parse_error(const std::string& text) {
  try {
    parse_config(text, "test.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Parses the defaults with one key overridden: {"key": value}.
std::string error_with(const std::string& key, const nlohmann::json& value) {
  nlohmann::json j = nlohmann::json::parse(config_to_json(ModelConfig{}));
  j[key] = value;
  return parse_error(j.dump());
}

#define EXPECT_MSG(msg, ...)                                              \
  do {                                                                    \
    const std::string m_ = (msg);                                         \
    EXPECT_EQ(m_.rfind("[config]", 0), 0u) << m_;                         \
    for (const char* part : {__VA_ARGS__})                                \
      EXPECT_NE(m_.find(part), std::string::npos) << "'" << part << "' not in: " << m_; \
  } while (0)

TEST(Config, DefaultsAreValidAndEmptyObjectGivesDefaults) {
  ModelConfig d;
  EXPECT_NO_THROW(d.validate());
  EXPECT_TRUE(same(parse_config("{}", "x"), d));
}

TEST(Config, RoundTrip) {
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 96;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.head_dim = 24;
  c.intermediate_size = 200;
  c.moe_intermediate_size = 48;
  c.n_routed_experts = 16;
  c.n_shared_experts = 0;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.first_k_dense_replace = 0;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rms_norm_eps = 1.2345678901234567e-7;
  c.rope_theta = 500000.0;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  c.aux_loss_alpha = 0.01;
  c.seq_aux_alpha = 1e-4;
  c.z_loss_coef = 1e-3;
  c.bias_update_rate = 1e-3;
  c.capacity_factor = 1.25;
  c.initializer_range = 0.006;
  const ModelConfig back = parse_config(config_to_json(c), "rt");
  EXPECT_TRUE(same(c, back)) << config_to_json(back);

  const auto path = std::filesystem::temp_directory_path() /
                    ("moe_cfg_" + std::to_string(::getpid()) + ".json");
  save_config(c, path.string());
  EXPECT_TRUE(same(c, load_config(path.string())));
  std::filesystem::remove(path);
}

TEST(Config, SerializesEveryKey) {
  const auto j = nlohmann::json::parse(config_to_json(ModelConfig{}));
  EXPECT_EQ(j.size(), 36u);  // 28 + attention, 5 MLA sizes, 2 MTP keys
  EXPECT_EQ(j.at("model_type"), "moe_cpp");
  EXPECT_EQ(j.at("n_group"), 1);
  EXPECT_EQ(j.at("topk_group"), 1);
  EXPECT_EQ(j.at("head_dim"), 32);
  EXPECT_EQ(j.at("scoring_func"), "softmax");
}

TEST(Config, HeadDimDerivedWhenAbsent) {
  EXPECT_EQ(parse_config(R"({"hidden_size": 256})", "x").head_dim, 64);
  EXPECT_EQ(parse_config(R"({"hidden_size": 256, "head_dim": null})", "x").head_dim, 64);
  // H * Dh need not equal D when head_dim is given (Qwen / DeepSeek style).
  EXPECT_EQ(parse_config(R"({"hidden_size": 100, "head_dim": 16})", "x").head_dim, 16);
  EXPECT_MSG(parse_error(R"({"hidden_size": 130})"), "head_dim", "hidden_size = 130",
             "not divisible", "test.json");
}

TEST(Config, UnknownKeySuggestsNearest) {
  EXPECT_MSG(parse_error(R"({"hiden_size": 128})"), "unknown key 'hiden_size'", "test.json",
             "did you mean 'hidden_size'", "known keys:", "num_experts_per_tok");
  const std::string m = parse_error(R"({"sliding_window": 4096})");
  EXPECT_MSG(m, "unknown key 'sliding_window'", "known keys:");
}

TEST(Config, WrongTypesNameKeyAndExpectedType) {
  EXPECT_MSG(error_with("hidden_size", "128"), "'hidden_size'", "expected an integer", "string");
  EXPECT_MSG(error_with("hidden_size", 128.5), "'hidden_size'", "expected an integer");
  EXPECT_MSG(error_with("scoring_func", 1), "'scoring_func'", "expected a string");
  EXPECT_MSG(error_with("norm_topk_prob", 1), "'norm_topk_prob'", "expected a boolean");
  EXPECT_MSG(error_with("rms_norm_eps", "1e-6"), "'rms_norm_eps'", "expected a number");
  EXPECT_MSG(error_with("vocab_size", nullptr), "'vocab_size'", "null");
  EXPECT_MSG(error_with("vocab_size", 18446744073709551615ull), "'vocab_size'", "too large");
  // Integers are fine where a number is expected.
  EXPECT_EQ(parse_config(R"({"routed_scaling_factor": 2})", "x").routed_scaling_factor, 2.0);
}

TEST(Config, InvalidJson) {
  EXPECT_MSG(parse_error("{\"hidden_size\": 128,}"), "test.json", "not valid JSON");
  EXPECT_MSG(parse_error("[1, 2]"), "test.json", "expected an object");
}

TEST(Config, ValidationErrorsNameTheKey) {
  EXPECT_MSG(error_with("model_type", "llama"), "model_type", "llama", "moe_cpp", "test.json");
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "intermediate_size",
                          "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok",
                          "max_position_embeddings"}) {
    EXPECT_MSG(error_with(key, 0), key, "must be positive");
    EXPECT_MSG(error_with(key, -3), key, "must be positive");
  }
  EXPECT_MSG(error_with("hidden_size", 1ll << 40), "hidden_size", "too large");
  EXPECT_MSG(error_with("n_shared_experts", -1), "n_shared_experts");
  EXPECT_MSG(error_with("num_key_value_heads", 3), "heads not dividing", "num_key_value_heads = 3",
             "num_attention_heads = 4");
  EXPECT_MSG(error_with("head_dim", 33), "head_dim = 33", "even");
  EXPECT_MSG(error_with("num_experts_per_tok", 9), "top-k larger than the expert count",
             "num_experts_per_tok = 9", "n_routed_experts = 8");
  EXPECT_MSG(error_with("first_k_dense_replace", 5), "first_k_dense_replace = 5");
  EXPECT_MSG(error_with("first_k_dense_replace", -1), "first_k_dense_replace = -1");
  EXPECT_MSG(error_with("scoring_func", "tanh"), "scoring_func", "tanh", "sigmoid");
  EXPECT_MSG(error_with("rms_norm_eps", 0), "rms_norm_eps", "positive");
  EXPECT_MSG(error_with("rope_theta", -1), "rope_theta");
  EXPECT_MSG(error_with("routed_scaling_factor", 0), "routed_scaling_factor");
  EXPECT_MSG(error_with("capacity_factor", -0.5), "capacity_factor", ">= 0");
  for (const char* key : {"aux_loss_alpha", "seq_aux_alpha", "z_loss_coef", "bias_update_rate"})
    EXPECT_MSG(error_with(key, -0.1), key, ">= 0");
  EXPECT_MSG(error_with("initializer_range", 0), "initializer_range", "positive");
  // Boundaries that are allowed.
  EXPECT_TRUE(error_with("first_k_dense_replace", 4).empty());
  EXPECT_TRUE(error_with("first_k_dense_replace", 0).empty());
  EXPECT_TRUE(error_with("num_experts_per_tok", 8).empty());
  EXPECT_TRUE(error_with("n_shared_experts", 0).empty());
  EXPECT_TRUE(error_with("capacity_factor", 0).empty());
}

// Group-limited routing: {"n_routed_experts": 16, "num_experts_per_tok": 4} plus `extra`.
std::string group_error(const nlohmann::json& extra) {
  nlohmann::json j = nlohmann::json::parse(config_to_json(ModelConfig{}));
  j["n_routed_experts"] = 16;
  j["num_experts_per_tok"] = 4;
  j.update(extra);
  return parse_error(j.dump());
}

TEST(Config, GroupLimitedRouting) {
  // HF DeepseekV3Config keys; absent means n_group = 1 (no limit), as in older config.json.
  const ModelConfig d = parse_config("{}", "x");
  EXPECT_EQ(d.n_group, 1);
  EXPECT_EQ(d.topk_group, 1);
  const ModelConfig c = parse_config(
      R"({"n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2})", "x");
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  // Allowed boundaries: K = topk_group * E/n_group; one expert per group; topk_group = n_group.
  EXPECT_TRUE(group_error({{"n_group", 4}, {"topk_group", 1}}).empty());
  EXPECT_TRUE(group_error({{"n_group", 16}, {"topk_group", 4}}).empty());
  EXPECT_TRUE(group_error({{"n_group", 8}, {"topk_group", 8}}).empty());

  EXPECT_MSG(group_error({{"n_group", 3}, {"topk_group", 1}}), "test.json", "n_group = 3",
             "does not divide n_routed_experts = 16", "choose n_group among 1, 2, 4, 8, 16");
  EXPECT_MSG(group_error({{"n_group", 0}}), "n_group = 0", "must be in [1, n_routed_experts");
  EXPECT_MSG(group_error({{"n_group", -2}}), "n_group = -2");
  EXPECT_MSG(group_error({{"n_group", 32}}), "n_group = 32", "n_routed_experts = 16");
  EXPECT_MSG(group_error({{"n_group", 4}, {"topk_group", 5}}), "topk_group = 5",
             "must be in [1, n_group = 4]");
  EXPECT_MSG(group_error({{"n_group", 4}, {"topk_group", 0}}), "topk_group = 0");
  EXPECT_MSG(group_error({{"topk_group", 2}}), "topk_group = 2", "n_group = 1");
  EXPECT_MSG(group_error({{"n_group", 8}, {"topk_group", 1}}), "num_experts_per_tok = 4",
             "topk_group * (n_routed_experts / n_group) = 1 * (16 / 8) = 2",
             "raise topk_group or lower num_experts_per_tok");
  EXPECT_MSG(error_with("n_group", "4"), "'n_group'", "expected an integer");
  EXPECT_MSG(error_with("topk_group", 1.5), "'topk_group'", "expected an integer");
  // validate() on a struct, as the trainer does for built-in configs.
  ModelConfig v;
  v.n_group = 3;
  EXPECT_THROW(v.validate(), Error);
}

TEST(Config, ValidateCatchesNaN) {
  ModelConfig c;
  c.rms_norm_eps = std::nan("");
  EXPECT_THROW(c.validate(), Error);
  c = ModelConfig{};
  c.aux_loss_alpha = std::nan("");
  EXPECT_THROW(c.validate(), Error);
}

TEST(Config, FileErrors) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moe_cfgdir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_MSG([&] {
    try { load_config((dir / "nope.json").string()); } catch (const Error& e) { return std::string(e.what()); }
    return std::string();
  }(), "nope.json", "cannot read");
  EXPECT_MSG([&] {
    try { load_config(dir.string()); } catch (const Error& e) { return std::string(e.what()); }
    return std::string();
  }(), "is a directory");
  {
    std::ofstream(dir / "bad.json") << R"({"num_key_value_heads": 3})";
  }
  EXPECT_MSG([&] {
    try { load_config((dir / "bad.json").string()); } catch (const Error& e) { return std::string(e.what()); }
    return std::string();
  }(), "bad.json", "heads not dividing");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
