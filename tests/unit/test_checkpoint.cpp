#include "model/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace moe {
namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 16;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 8;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  return c;
}

std::vector<float> random_params(const ParamLayout& lay) {
  std::vector<float> p(static_cast<size_t>(lay.total_numel));
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>(normal01(7, 1, i));
  p[3] = -0.0f;  // bitwise round trip keeps the sign of zero
  return p;
}

struct TempDir {
  std::string path;
  explicit TempDir(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("moe_ckpt_" + name + "_" + std::to_string(::getpid())))
                 .string()) {
    std::filesystem::remove_all(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

std::string load_error(const std::string& dir) {
  ModelConfig c;
  std::vector<float> p;
  try {
    load_checkpoint(dir, &c, &p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(msg, part)                                               \
  do {                                                                           \
    const std::string m_ = (msg);                                                \
    EXPECT_NE(m_.find(part), std::string::npos) << "'" << part << "' not in: " << m_; \
  } while (0)

// Rewrites dir/model.safetensors from its current tensors after `edit` changes them.
template <class F>
void rewrite_weights(const std::string& dir, F&& edit) {
  const std::string p = dir + "/model.safetensors";
  SafetensorsFile f = read_safetensors(p);
  edit(f.tensors);
  std::vector<TensorRef> refs;
  for (const auto& [name, t] : f.tensors) refs.push_back({name, t.dtype, t.shape, t.bytes.data()});
  write_safetensors(p, refs, f.metadata);
}

TEST(Checkpoint, RoundTripBitwise) {
  for (bool tied : {false, true}) {
    TempDir d(tied ? "rt_tied" : "rt");
    ModelConfig cfg = small_config();
    cfg.tie_word_embeddings = tied;
    const ParamLayout lay = make_layout(cfg);
    const std::vector<float> params = random_params(lay);
    save_checkpoint(d.path + "/sub", cfg, lay, params.data());  // creates the directory

    const SafetensorsFile f = read_safetensors(d.path + "/sub/model.safetensors");
    EXPECT_EQ(f.metadata.at("format"), "pt");
    EXPECT_EQ(f.tensors.size(), lay.specs.size());
    EXPECT_EQ(f.has("lm_head.weight"), !tied);
    EXPECT_EQ(f.at("model.layers.1.mlp.experts.3.down_proj.weight").shape,
              (std::vector<int64_t>{16, 8}));

    ModelConfig back;
    std::vector<float> loaded;
    load_checkpoint(d.path + "/sub", &back, &loaded);
    EXPECT_EQ(config_to_json(back), config_to_json(cfg));
    ASSERT_EQ(loaded.size(), params.size());
    EXPECT_EQ(std::memcmp(loaded.data(), params.data(), params.size() * sizeof(float)), 0);
  }
}

TEST(Checkpoint, MissingDirectoryAndFiles) {
  TempDir d("missing");
  EXPECT_CONTAINS(load_error(d.path), "no checkpoint directory");
  const ModelConfig cfg = small_config();
  const ParamLayout lay = make_layout(cfg);
  const auto params = random_params(lay);
  save_checkpoint(d.path, cfg, lay, params.data());
  std::filesystem::remove(d.path + "/model.safetensors");
  EXPECT_CONTAINS(load_error(d.path), "has no model.safetensors");
  save_checkpoint(d.path, cfg, lay, params.data());
  std::filesystem::remove(d.path + "/config.json");
  EXPECT_CONTAINS(load_error(d.path), "has no config.json");
  EXPECT_CONTAINS(load_error(d.path + "/model.safetensors"), "is not a directory");
}

TEST(Checkpoint, MissingTensor) {
  TempDir d("mt");
  const ModelConfig cfg = small_config();
  const ParamLayout lay = make_layout(cfg);
  const auto params = random_params(lay);
  save_checkpoint(d.path, cfg, lay, params.data());
  rewrite_weights(d.path, [](auto& t) { t.erase("model.layers.2.mlp.experts.1.up_proj.weight"); });
  const std::string m = load_error(d.path);
  EXPECT_CONTAINS(m, "[checkpoint]");
  EXPECT_CONTAINS(m, "missing 1 tensor");
  EXPECT_CONTAINS(m, "model.layers.2.mlp.experts.1.up_proj.weight");

  save_checkpoint(d.path, cfg, lay, params.data());
  rewrite_weights(d.path, [](auto& t) { t.erase("lm_head.weight"); });
  EXPECT_CONTAINS(load_error(d.path), "tie_word_embeddings");
}

TEST(Checkpoint, WrongShapeDtypeAndExtraTensor) {
  TempDir d("shape");
  const ModelConfig cfg = small_config();
  const ParamLayout lay = make_layout(cfg);
  const auto params = random_params(lay);

  save_checkpoint(d.path, cfg, lay, params.data());
  rewrite_weights(d.path, [](auto& t) {
    t.at("model.layers.0.self_attn.k_proj.weight").shape = {16, 8};  // [8, 16] transposed
  });
  std::string m = load_error(d.path);
  EXPECT_CONTAINS(m, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_CONTAINS(m, "has shape [16, 8]");
  EXPECT_CONTAINS(m, "[8, 16]");

  save_checkpoint(d.path, cfg, lay, params.data());
  rewrite_weights(d.path, [](auto& t) {
    auto& x = t.at("model.norm.weight");
    x.dtype = "I32";
  });
  m = load_error(d.path);
  EXPECT_CONTAINS(m, "model.norm.weight");
  EXPECT_CONTAINS(m, "dtype I32, expected F32");

  save_checkpoint(d.path, cfg, lay, params.data());
  rewrite_weights(d.path, [](auto& t) { t["model.extra.weight"] = t.at("model.norm.weight"); });
  EXPECT_CONTAINS(load_error(d.path), "model.extra.weight");

  ModelConfig tied = cfg;
  tied.tie_word_embeddings = true;
  save_checkpoint(d.path, cfg, lay, params.data());
  save_config(tied, d.path + "/config.json");  // the weights still hold lm_head
  EXPECT_CONTAINS(load_error(d.path), "sets tie_word_embeddings = true");
}

TEST(Checkpoint, ConfigAndWeightsFromDifferentModels) {
  TempDir d("mismatch");
  const ModelConfig cfg = small_config();
  const ParamLayout lay = make_layout(cfg);
  const auto params = random_params(lay);
  save_checkpoint(d.path, cfg, lay, params.data());
  ModelConfig other = cfg;
  other.n_routed_experts = 6;
  save_config(other, d.path + "/config.json");
  EXPECT_CONTAINS(load_error(d.path), "model.layers.1.mlp.gate.weight");
  // A config with huge sizes must fail on the shapes, not try to allocate them.
  other = cfg;
  other.vocab_size = 1ll << 30;
  save_config(other, d.path + "/config.json");
  EXPECT_CONTAINS(load_error(d.path), "model.embed_tokens.weight");
  // An invalid config.json.
  std::ofstream(d.path + "/config.json") << R"({"num_experts_per_tok": 9})";
  const std::string m = load_error(d.path);
  EXPECT_CONTAINS(m, "config.json");
  EXPECT_CONTAINS(m, "top-k larger than the expert count");
}

TEST(Checkpoint, TruncatedAndCorruptFile) {
  TempDir d("trunc");
  const ModelConfig cfg = small_config();
  const ParamLayout lay = make_layout(cfg);
  const auto params = random_params(lay);
  save_checkpoint(d.path, cfg, lay, params.data());
  const std::string p = d.path + "/model.safetensors";
  const auto size = std::filesystem::file_size(p);
  for (uintmax_t len : {uintmax_t{0}, uintmax_t{5}, uintmax_t{100}, size / 2, size - 1}) {
    std::filesystem::resize_file(p, len);
    const std::string m = load_error(d.path);
    EXPECT_CONTAINS(m, "[checkpoint]");
    EXPECT_CONTAINS(m, "model.safetensors");
    save_checkpoint(d.path, cfg, lay, params.data());
  }
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(12);
    f.write("\x01\x02", 2);  // garbage in the JSON header
  }
  EXPECT_CONTAINS(load_error(d.path), "not valid JSON");
}

TEST(Checkpoint, SaveRejectsMismatchedLayout) {
  TempDir d("badsave");
  const ModelConfig cfg = small_config();
  ModelConfig other = cfg;
  other.n_routed_experts = 6;
  const ParamLayout lay = make_layout(other);
  const std::vector<float> params(static_cast<size_t>(lay.total_numel));
  EXPECT_THROW(save_checkpoint(d.path, cfg, lay, params.data()), Error);
  ModelConfig bad = cfg;
  bad.num_key_value_heads = 3;
  EXPECT_THROW(save_checkpoint(d.path, bad, make_layout(cfg), params.data()), Error);
}

}  // namespace
}  // namespace moe
