// Int8Weights, the bf16 and int8 checkpoint formats (round trips and bad input), and the int8
// decoder's logits against fp32.
//
// Bounds asserted:
//  - bf16 export: every weight reloads as bf16_to_f32(f32_to_bf16(w)) exactly; the reloaded
//    model's logits are within 2% of max |logit| of the fp32 model's (bf16 moves each weight by
//    at most 2^-9 of itself; measured ~0.3%).
//  - int8 decoding: next-token logits within 5% of max |logit| of fp32 decoding (weights off by
//    half a step of amax/127 per row, activations by half a step of range/255 per token;
//    measured ~1%), and exactly the same from an int8 folder as from on-the-fly quantization;
//    the decoder's mean loss over a window within 1% of fp32's (measured ~0.1%), and fp32
//    decoder loss within 1e-5 (relative) of the full forward's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/dtype.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "infer/generate.h"
#include "model/quantized.h"
#include "kernels/cpu/int8.h"
#include "model/checkpoint.h"
#include "model/model.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

// Dense first layer, then 4 experts top-2 with a shared expert; in/out sizes not multiples of
// 16 (D = 40, Fe = 24, F = 56).
ModelConfig quant_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 40;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 10;
  c.intermediate_size = 56;
  c.moe_intermediate_size = 24;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.max_position_embeddings = 32;
  c.initializer_range = 0.1;  // logits well away from uniform
  return c;
}

struct TempDir {
  std::string path;
  explicit TempDir(const std::string& name)
      : path((fs::temp_directory_path() / ("moe_quant_" + name + "_" + std::to_string(::getpid())))
                 .string()) {
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
}

template <class F>
void rewrite_weights(const std::string& dir, F&& edit) {
  const std::string p = dir + "/model.safetensors";
  SafetensorsFile f = read_safetensors(p);
  edit(f.tensors);
  std::vector<TensorRef> refs;
  for (const auto& [name, t] : f.tensors) refs.push_back({name, t.dtype, t.shape, t.bytes.data()});
  write_safetensors(p, refs, f.metadata);
}

std::string load_error(const std::string& dir) {
  ModelConfig c;
  std::vector<float> p;
  Int8Weights w;
  try {
    load_quantized(dir, &c, &p, &w);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(msg, part)                                                    \
  do {                                                                                \
    const std::string m_ = (msg);                                                     \
    EXPECT_NE(m_.find(part), std::string::npos) << "'" << part << "' not in: " << m_; \
  } while (0)

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 1e-30, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, double(std::fabs(b[i])));
    d = std::max(d, double(std::fabs(a[i] - b[i])));
  }
  return d / mx;
}

std::vector<int32_t> context() {
  std::vector<int32_t> t;
  for (int i = 0; i < 12; ++i) t.push_back((i * 13 + 5) % 64);
  return t;
}

TEST(QuantWeights, WhichTensorsAndFusedViews) {
  Model m(quant_config());
  m.init_weights(3);
  const Int8Weights w = Int8Weights::quantize(m);
  const ParamLayout& lay = m.layout();
  const ModelConfig& c = m.config();
  const int64_t D = c.hidden_size, Fe = c.moe_intermediate_size, Qd = c.qkv_dim();
  int64_t n = 0;
  for (const ParamSpec& s : lay.specs) {
    const bool want = s.name.find("_proj.weight") != std::string::npos;
    EXPECT_EQ(is_int8_param(s), want) << s.name;
    n += want;
  }
  EXPECT_EQ(w.tensors(), n);
  // fp32 stays fp32: router, embedding, norms, lm_head.
  const LayerOffsets& o1 = lay.layers[1];
  EXPECT_FALSE(w.find(o1.router, c.n_routed_experts));
  EXPECT_FALSE(w.find(lay.embed, c.vocab_size));
  EXPECT_FALSE(w.find(lay.lm_head, c.vocab_size));
  EXPECT_FALSE(w.find(o1.input_norm, 1));
  // q, k, v as one [Qd, D] view: the same values as quantizing the fused rows at once.
  const Int8Tensor qkv = w.find(o1.qkv, Qd);
  ASSERT_TRUE(qkv);
  EXPECT_EQ(qkv.in, D);
  std::vector<int8_t> q(size_t(Qd * D));
  std::vector<float> s(static_cast<size_t>(Qd));
  cpu::quantize_weight_int8(q.data(), s.data(), m.params().data() + o1.qkv, Qd, D);
  EXPECT_EQ(std::memcmp(q.data(), qkv.q, q.size()), 0);
  EXPECT_EQ(std::memcmp(s.data(), qkv.scale, s.size() * sizeof(float)), 0);
  EXPECT_FALSE(w.find(o1.o_proj, D + 1)) << "the view must not run into the (fp32) norm";
  EXPECT_FALSE(w.find(lay.layers[0].mlp_down, D + 1)) << "nor into the next layer's norm";
  EXPECT_FALSE(w.find(o1.qkv + 1, 1)) << "only a weight's first row is a valid start";
  // Routed experts: expert e's gate+up at q + e * q_stride, scales at + e * s_stride.
  const Int8Tensor gu = w.find(o1.experts, 2 * Fe), dn = w.find(o1.experts + 2 * Fe * D, D);
  ASSERT_TRUE(gu && dn);
  EXPECT_EQ(gu.q_stride, lay.expert_block);
  EXPECT_EQ(gu.s_stride, 2 * Fe + D);
  EXPECT_EQ(dn.in, Fe);
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    std::vector<int8_t> eq(size_t(D * Fe));
    std::vector<float> es(static_cast<size_t>(D));
    cpu::quantize_weight_int8(eq.data(), es.data(),
                              m.params().data() + o1.experts + e * lay.expert_block + 2 * Fe * D, D,
                              Fe);
    EXPECT_EQ(std::memcmp(eq.data(), dn.q + e * dn.q_stride, eq.size()), 0) << e;
    EXPECT_EQ(std::memcmp(es.data(), dn.scale + e * dn.s_stride, es.size() * 4), 0) << e;
  }
  // Dense FFN gate+up fused, shared gate+up fused.
  EXPECT_TRUE(w.find(lay.layers[0].mlp_gu, 2 * c.intermediate_size));
  EXPECT_TRUE(w.find(o1.shared_gu, 2 * c.shared_width()));
  EXPECT_EQ(w.find(o1.shared_gu, 2 * c.shared_width()).q_stride, 0);
}

TEST(QuantCheckpoint, Int8RoundTripKeepsStoredValues) {
  TempDir d("rt8");
  Model m(quant_config());
  m.init_weights(4);
  const Int8Weights w = Int8Weights::quantize(m);
  save_quantized(d.path, m.config(), m.layout(), m.params().data(), w);

  const nlohmann::json j = nlohmann::json::parse(read_text(d.path + "/config.json"));
  EXPECT_EQ(j.at("torch_dtype"), "float32");
  EXPECT_EQ(j.at("quantization_config").at("quant_method"), kInt8QuantMethod);
  EXPECT_EQ(j.at("quantization_config").at("bits"), 8);
  const SafetensorsFile f = read_safetensors(d.path + "/model.safetensors");
  EXPECT_EQ(f.at("model.layers.1.self_attn.q_proj.weight").dtype, "I8");
  EXPECT_EQ(f.at("model.layers.1.self_attn.q_proj.weight_scale").shape, (std::vector<int64_t>{40}));
  EXPECT_EQ(f.at("model.layers.1.mlp.gate.weight").dtype, "F32");
  EXPECT_EQ(f.at("lm_head.weight").dtype, "F32");

  ModelConfig cfg;
  std::vector<float> p;
  Int8Weights back;
  const CheckpointInfo info = load_quantized(d.path, &cfg, &p, &back);
  EXPECT_EQ(info.format, WeightFormat::kInt8);
  EXPECT_EQ(info.int8_tensors, w.tensors());
  EXPECT_EQ(config_to_json(cfg), config_to_json(m.config()));
  ASSERT_EQ(back.tensors(), w.tensors());
  for (const ParamSpec& s : m.layout().specs) {
    const float* orig = m.params().data() + s.offset;
    const float* got = p.data() + s.offset;
    if (!is_int8_param(s)) {
      EXPECT_EQ(std::memcmp(orig, got, sizeof(float) * size_t(s.numel)), 0) << s.name;
      continue;
    }
    const Int8Data a = w.data(s), b = back.data(s);
    ASSERT_TRUE(a.q && b.q) << s.name;
    EXPECT_EQ(std::memcmp(a.q, b.q, size_t(s.numel)), 0) << s.name;
    EXPECT_EQ(std::memcmp(a.scale, b.scale, sizeof(float) * size_t(s.shape[0])), 0) << s.name;
    for (int64_t i = 0; i < s.numel; ++i)  // fp32 params are the dequantized weights
      ASSERT_EQ(got[i], float(a.q[i]) * a.scale[i / s.shape[1]]) << s.name << " [" << i << "]";
  }
  // A plain load of the int8 folder gives the same dequantized params.
  std::vector<float> p2;
  ModelConfig c2;
  EXPECT_EQ(load_checkpoint(d.path, &c2, &p2).format, WeightFormat::kInt8);
  EXPECT_EQ(p2, p);
}

TEST(QuantCheckpoint, Bf16ExportRoundTripAndLogits) {
  TempDir d("bf16");
  Model m(quant_config());
  m.init_weights(5);
  SaveOptions opt;
  opt.format = WeightFormat::kBF16;
  save_checkpoint(d.path, m.config(), m.layout(), m.params().data(), opt);
  const nlohmann::json j = nlohmann::json::parse(read_text(d.path + "/config.json"));
  EXPECT_EQ(j.at("torch_dtype"), "bfloat16");
  EXPECT_FALSE(j.contains("quantization_config"));
  const SafetensorsFile f = read_safetensors(d.path + "/model.safetensors");
  for (const auto& [name, t] : f.tensors) EXPECT_EQ(t.dtype, "BF16") << name;
  const int64_t bytes = fs::file_size(d.path + "/model.safetensors");
  EXPECT_LT(bytes, m.layout().total_numel * 2 + 65536);

  ModelConfig cfg;
  std::vector<float> p;
  const CheckpointInfo info = load_checkpoint(d.path, &cfg, &p);
  EXPECT_EQ(info.format, WeightFormat::kBF16);
  EXPECT_EQ(info.torch_dtype, "bfloat16");
  ASSERT_EQ(p.size(), m.params().size());
  for (size_t i = 0; i < p.size(); ++i)
    ASSERT_EQ(p[i], bf16_to_f32(f32_to_bf16(m.params()[i]))) << i;

  Model m2(cfg);
  m2.params() = p;
  std::vector<int32_t> tokens = context();
  const int64_t T = int64_t(tokens.size()) - 1;
  m.forward(tokens.data(), 1, T);
  const std::vector<float> a(m.logits(), m.logits() + T * cfg.vocab_size);
  m2.forward(tokens.data(), 1, T);
  const std::vector<float> b(m2.logits(), m2.logits() + T * cfg.vocab_size);
  const double rel = max_rel_diff(b, a);
  EXPECT_LE(rel, 0.02) << "bf16 logits vs fp32";
  EXPECT_GT(rel, 0.0) << "bf16 rounding should change something";
  std::printf("bf16 export: max |logit diff| / max |logit| = %.4g\n", rel);
}

TEST(QuantCheckpoint, Fp32DefaultWritesTorchDtypeAndLoads) {
  TempDir d("f32");
  Model m(quant_config());
  m.init_weights(6);
  save_checkpoint(d.path, m.config(), m.layout(), m.params().data());
  const nlohmann::json j = nlohmann::json::parse(read_text(d.path + "/config.json"));
  EXPECT_EQ(j.at("torch_dtype"), "float32");
  // The config.json of a checkpoint is still a model config (moe info, moe train --config).
  EXPECT_EQ(config_to_json(load_config(d.path + "/config.json")), config_to_json(m.config()));
  ModelConfig cfg;
  std::vector<float> p;
  Int8Weights w;
  EXPECT_EQ(load_quantized(d.path, &cfg, &p, &w).format, WeightFormat::kF32);
  EXPECT_TRUE(w.empty()) << "a float folder has no int8 weights unless asked";
  EXPECT_EQ(p, m.params());
  load_quantized(d.path, &cfg, &p, &w, /*quantize_fp32=*/true);
  EXPECT_EQ(w.tensors(), Int8Weights::quantize(m).tensors());
}

TEST(QuantDecode, Int8LogitsCloseToFp32AndSameFromFolder) {
  TempDir d("dec");
  Model m(quant_config());
  m.init_weights(7);
  const Int8Weights w = Int8Weights::quantize(m);
  const std::vector<int32_t> ctx = context();
  const std::vector<float> f32 = next_token_logits(m, ctx);
  const std::vector<float> i8 = next_token_logits(m, ctx, &w);
  const double rel = max_rel_diff(i8, f32);
  std::printf("int8 decode: max |logit diff| / max |logit| = %.4g\n", rel);
  EXPECT_LE(rel, 0.05);
  EXPECT_GT(rel, 0.0) << "int8 should differ from fp32 a little";

  // The same from an int8 folder (stored q and scales), bit for bit.
  save_quantized(d.path, m.config(), m.layout(), m.params().data(), w);
  ModelConfig cfg;
  std::vector<float> p;
  Int8Weights back;
  load_quantized(d.path, &cfg, &p, &back);
  Model m2(cfg);
  m2.params() = p;
  const std::vector<float> i8b = next_token_logits(m2, ctx, &back);
  EXPECT_EQ(i8b, i8);

  // Int8 weights of another model are refused.
  ModelConfig other = quant_config();
  other.intermediate_size = 64;
  Model m3(other);
  EXPECT_TRUE(w.matches(m.layout()));
  EXPECT_FALSE(w.matches(m3.layout()));
  EXPECT_THROW(next_token_logits(m3, ctx, &w), Error);

  // Greedy generation runs in int8 end to end.
  GenerateOptions go;
  go.max_new_tokens = 40;  // past max_position_embeddings = 32: the cache restarts
  go.temperature = 0;
  go.int8 = &w;
  const std::vector<int32_t> out = generate(m, ctx, go);
  EXPECT_EQ(out.size(), 40u);
}

TEST(QuantDecode, WindowLossMatchesForwardAndInt8IsClose) {
  Model m(quant_config());
  m.init_weights(9);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 25; ++i) tokens.push_back((i * i * 7 + 3) % 64);
  const int64_t T = int64_t(tokens.size()) - 1;
  const double fwd = m.forward(tokens.data(), 1, T).ce;
  const double dec = window_loss_sum(m, tokens) / double(T);
  EXPECT_NEAR(dec, fwd, 1e-5 * fwd) << "decoder loss vs the full forward's";
  const Int8Weights w = Int8Weights::quantize(m);
  const double i8 = window_loss_sum(m, tokens, &w) / double(T);
  std::printf("window loss: fp32 %.6f, int8 %.6f (%+.3f%%)\n", dec, i8, 100 * (i8 / dec - 1));
  EXPECT_NEAR(i8, dec, 0.01 * dec);
  EXPECT_NE(i8, dec);
  EXPECT_THROW(window_loss_sum(m, {1}), Error);
}

// An int8 folder for the bad-input tests.
void save_int8(const std::string& dir) {
  Model m(quant_config());
  m.init_weights(8);
  save_quantized(dir, m.config(), m.layout(), m.params().data(), Int8Weights::quantize(m));
}

TEST(QuantCheckpoint, BadQuantizationConfig) {
  TempDir d("badcfg");
  save_int8(d.path);
  const std::string cfg_path = d.path + "/config.json";
  const nlohmann::json good = nlohmann::json::parse(read_text(cfg_path));
  auto with = [&](auto edit) {
    nlohmann::json j = good;
    edit(j);
    write_text(cfg_path, j.dump(2));
    return load_error(d.path);
  };
  std::string e =
      with([](nlohmann::json& j) { j["quantization_config"]["quant_method"] = "gptq"; });
  EXPECT_CONTAINS(e, "quant_method = \"gptq\" is not supported");
  EXPECT_CONTAINS(e, "moe quantize");
  EXPECT_CONTAINS(e, "config.json");
  e = with([](nlohmann::json& j) { j["quantization_config"].erase("quant_method"); });
  EXPECT_CONTAINS(e, "no quant_method");
  e = with([](nlohmann::json& j) { j["quantization_config"] = "int8"; });
  EXPECT_CONTAINS(e, "quantization_config is a JSON string");
  e = with([](nlohmann::json& j) { j["quantization_config"]["bits"] = 4; });
  EXPECT_CONTAINS(e, "bits = 4");
  e = with([](nlohmann::json& j) { j["quantization_config"]["granularity"] = "per_tensor"; });
  EXPECT_CONTAINS(e, "granularity");
  e = with([](nlohmann::json& j) { j["torch_dtype"] = "float16"; });
  EXPECT_CONTAINS(e, "torch_dtype = \"float16\" is not supported");
  // I8 weights without any quantization_config.
  e = with([](nlohmann::json& j) { j.erase("quantization_config"); });
  EXPECT_CONTAINS(e, "is I8 but");
  EXPECT_CONTAINS(e, "has no quantization_config");
  with([](nlohmann::json&) {});
  EXPECT_EQ(load_error(d.path), "");
}

TEST(QuantCheckpoint, BadInt8Tensors) {
  TempDir d("badt");
  const std::string w = "model.layers.2.mlp.experts.3.down_proj.weight";
  save_int8(d.path);
  rewrite_weights(d.path, [&](auto& t) { t.erase(w + "_scale"); });
  std::string e = load_error(d.path);
  EXPECT_CONTAINS(e, "int8 tensor '" + w + "' has no scale '" + w + "_scale'");
  EXPECT_CONTAINS(e, "model.safetensors");
  EXPECT_CONTAINS(e, "moe quantize");

  save_int8(d.path);
  rewrite_weights(d.path, [&](auto& t) { t.at(w + "_scale").shape = {5, 8}; });
  EXPECT_CONTAINS(load_error(d.path), "expected F32 [40]");

  save_int8(d.path);
  rewrite_weights(d.path, [&](auto& t) {
    auto& s = t.at(w + "_scale");
    const float nan = NAN;
    std::memcpy(s.bytes.data() + 4 * 7, &nan, 4);
  });
  EXPECT_CONTAINS(load_error(d.path), "row 7");

  // A scale beside a weight stored as F32.
  save_int8(d.path);
  rewrite_weights(d.path, [&](auto& t) {
    TensorData& q = t.at(w);
    TensorData f32;
    f32.dtype = "F32";
    f32.shape = q.shape;
    f32.bytes.assign(q.bytes.size() * 4, 0);
    q = f32;
  });
  EXPECT_CONTAINS(load_error(d.path), "holds the scale '" + w + "_scale'");

  // An unsupported dtype.
  save_int8(d.path);
  rewrite_weights(d.path, [&](auto& t) {
    TensorData& x = t.at("model.norm.weight");
    x.dtype = "F16";
    x.bytes.resize(x.bytes.size() / 2);
  });
  EXPECT_CONTAINS(load_error(d.path), "has dtype F16, expected F32 or BF16");
}

TEST(QuantCheckpoint, SaveRejectsInt8WithoutWeights) {
  TempDir d("nosave");
  Model m(quant_config());
  SaveOptions opt;
  opt.format = WeightFormat::kInt8;
  EXPECT_THROW(save_checkpoint(d.path, m.config(), m.layout(), m.params().data(), opt), Error);
  EXPECT_THROW(save_quantized(d.path, m.config(), m.layout(), m.params().data(), Int8Weights()),
               Error);
}

}  // namespace
}  // namespace moe
