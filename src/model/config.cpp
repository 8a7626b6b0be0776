#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"

namespace moe {

namespace {

constexpr const char* kOp = "config";
// Every size must fit in int32 (kernels index with it) and products of sizes in int64.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

// kSize: an integer where null means "none", stored as 0 (the MLA sizes; HF writes
// "q_lora_rank": null for a direct q_proj). It is written back as 0, never null, so the resolved
// run config stays valid TOML; 0 and null read the same.
enum class Kind { kString, kInt, kBool, kDouble, kSize };

// One config.json key and the ModelConfig member it fills.
struct Field {
  const char* key;
  Kind kind;
  std::string ModelConfig::*s = nullptr;
  int64_t ModelConfig::*i = nullptr;
  bool ModelConfig::*b = nullptr;
  double ModelConfig::*d = nullptr;
};

Field str_f(const char* k, std::string ModelConfig::*m) {
  return {k, Kind::kString, m, {}, {}, {}};
}
Field int_f(const char* k, int64_t ModelConfig::*m) { return {k, Kind::kInt, {}, m, {}, {}}; }
Field bool_f(const char* k, bool ModelConfig::*m) { return {k, Kind::kBool, {}, {}, m, {}}; }
Field dbl_f(const char* k, double ModelConfig::*m) { return {k, Kind::kDouble, {}, {}, {}, m}; }
Field size_f(const char* k, int64_t ModelConfig::*m) { return {k, Kind::kSize, {}, m, {}, {}}; }

// In the order config.json is written.
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      str_f("model_type", &ModelConfig::model_type),
      int_f("vocab_size", &ModelConfig::vocab_size),
      int_f("hidden_size", &ModelConfig::hidden_size),
      int_f("num_hidden_layers", &ModelConfig::num_hidden_layers),
      int_f("num_attention_heads", &ModelConfig::num_attention_heads),
      int_f("num_key_value_heads", &ModelConfig::num_key_value_heads),
      int_f("head_dim", &ModelConfig::head_dim),
      str_f("attention", &ModelConfig::attention),
      size_f("q_lora_rank", &ModelConfig::q_lora_rank),
      size_f("kv_lora_rank", &ModelConfig::kv_lora_rank),
      size_f("qk_nope_head_dim", &ModelConfig::qk_nope_head_dim),
      size_f("qk_rope_head_dim", &ModelConfig::qk_rope_head_dim),
      size_f("v_head_dim", &ModelConfig::v_head_dim),
      int_f("intermediate_size", &ModelConfig::intermediate_size),
      int_f("moe_intermediate_size", &ModelConfig::moe_intermediate_size),
      int_f("n_routed_experts", &ModelConfig::n_routed_experts),
      int_f("n_shared_experts", &ModelConfig::n_shared_experts),
      int_f("num_experts_per_tok", &ModelConfig::num_experts_per_tok),
      int_f("n_group", &ModelConfig::n_group),
      int_f("topk_group", &ModelConfig::topk_group),
      int_f("first_k_dense_replace", &ModelConfig::first_k_dense_replace),
      str_f("scoring_func", &ModelConfig::scoring_func),
      bool_f("norm_topk_prob", &ModelConfig::norm_topk_prob),
      dbl_f("routed_scaling_factor", &ModelConfig::routed_scaling_factor),
      dbl_f("rms_norm_eps", &ModelConfig::rms_norm_eps),
      dbl_f("rope_theta", &ModelConfig::rope_theta),
      int_f("max_position_embeddings", &ModelConfig::max_position_embeddings),
      bool_f("tie_word_embeddings", &ModelConfig::tie_word_embeddings),
      dbl_f("aux_loss_alpha", &ModelConfig::aux_loss_alpha),
      dbl_f("seq_aux_alpha", &ModelConfig::seq_aux_alpha),
      dbl_f("z_loss_coef", &ModelConfig::z_loss_coef),
      dbl_f("bias_update_rate", &ModelConfig::bias_update_rate),
      dbl_f("capacity_factor", &ModelConfig::capacity_factor),
      dbl_f("initializer_range", &ModelConfig::initializer_range),
      int_f("num_nextn_predict_layers", &ModelConfig::num_nextn_predict_layers),
      dbl_f("mtp_loss_weight", &ModelConfig::mtp_loss_weight),
  };
  return f;
}

// Keys of a Hugging Face DeepseekV3 config.json without a ModelConfig member. Each is checked
// against what moe.cpp implements (apply_hf_keys) and then dropped: save_config does not write
// them. `info` ones describe the file or the serving stack and may hold anything.
struct HfKey {
  const char* key;
  bool info;
};
const std::vector<HfKey>& hf_keys() {
  static const std::vector<HfKey> k = {
      {"architectures", true},        {"auto_map", true},         {"torch_dtype", true},
      {"transformers_version", true}, {"_name_or_path", true},    {"use_cache", true},
      {"bos_token_id", true},         {"eos_token_id", true},     {"pad_token_id", true},
      {"pretraining_tp", true},       {"ep_size", true},          {"hidden_act", false},
      {"attention_bias", false},      {"mlp_bias", false},        {"attention_dropout", false},
      {"moe_layer_freq", false},      {"topk_method", false},     {"seq_aux", false},
      {"rope_scaling", false},        {"rope_interleave", false}, {"qk_head_dim", false},
      {"quantization_config", false},
  };
  return k;
}
bool is_hf_key(const std::string& key) {
  for (const auto& h : hf_keys())
    if (key == h.key) return true;
  return false;
}

// model_type "deepseek_v3": keys whose HF DeepseekV3Config default differs from ours (HF would
// read an absent one as DeepSeek-V3-671B's value, we as ours), so the file must give them.
const std::vector<std::pair<const char*, const char*>>& deepseek_required() {
  static const std::vector<std::pair<const char*, const char*>> k = {
      {"vocab_size", "129280"},
      {"hidden_size", "7168"},
      {"intermediate_size", "18432"},
      {"moe_intermediate_size", "2048"},
      {"num_hidden_layers", "61"},
      {"num_attention_heads", "128"},
      {"n_routed_experts", "256"},
      {"n_shared_experts", "1"},
      {"num_experts_per_tok", "8"},
      {"routed_scaling_factor", "2.5"},
      {"first_k_dense_replace", "3"},
      {"norm_topk_prob", "true"},
      {"n_group", "8"},
      {"topk_group", "4"},
      {"q_lora_rank", "1536"},
      {"kv_lora_rank", "512"},
      {"qk_nope_head_dim", "128"},
      {"qk_rope_head_dim", "64"},
      {"v_head_dim", "128"},
      {"max_position_embeddings", "4096"},
  };
  return k;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

[[noreturn]] void unknown_key(const std::string& key, const std::string& origin) {
  std::string best, known;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& f : fields()) {
    known += (known.empty() ? "" : ", ") + std::string(f.key);
    const size_t d = edit_distance(key, f.key);
    if (d < best_d) best_d = d, best = f.key;
  }
  for (const auto& h : hf_keys()) {
    const size_t d = edit_distance(key, h.key);
    if (d < best_d) best_d = d, best = h.key;
  }
  const bool close = best_d <= std::max<size_t>(3, key.size() / 3);
  MOE_FAIL(kOp, origin, ": unknown key '", key.substr(0, 80), "'",
           close ? "; did you mean '" + best + "'?" : std::string("; remove it"),
           " (known keys: ", known,
           "; HF DeepseekV3 config.json keys checked and dropped: architectures, hidden_act, "
           "topk_method, seq_aux, rope_scaling, rope_interleave, qk_head_dim, ...)");
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kString:
      return "a string";
    case Kind::kInt:
      return "an integer";
    case Kind::kBool:
      return "a boolean (true/false)";
    case Kind::kDouble:
      return "a number";
    case Kind::kSize:
      return "an integer or null";
  }
  return "?";
}

void set_field(ModelConfig& c, const Field& f, const nlohmann::json& v, const std::string& origin) {
  bool ok = false;
  switch (f.kind) {
    case Kind::kString:
      if ((ok = v.is_string())) c.*f.s = v.get<std::string>();
      break;
    case Kind::kSize:
      if (v.is_null()) {
        c.*f.i = 0;
        return;
      }
      [[fallthrough]];
    case Kind::kInt:
      if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        MOE_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), kOp, origin,
                  ": key '", f.key, "' = ", u, " is too large; use a value below ", kMaxSize);
        c.*f.i = static_cast<int64_t>(u);
        ok = true;
      } else if ((ok = v.is_number_integer())) {
        c.*f.i = v.get<int64_t>();
      }
      break;
    case Kind::kBool:
      if ((ok = v.is_boolean())) c.*f.b = v.get<bool>();
      break;
    case Kind::kDouble:
      if ((ok = v.is_number())) c.*f.d = v.get<double>();
      break;
  }
  if (ok) return;
  const ModelConfig d;
  const nlohmann::json example = f.kind == Kind::kString ? nlohmann::json(d.*f.s)
                                 : f.kind == Kind::kSize ? nlohmann::json(512)
                                 : f.kind == Kind::kInt  ? nlohmann::json(d.*f.i)
                                 : f.kind == Kind::kBool ? nlohmann::json(d.*f.b)
                                                         : nlohmann::json(d.*f.d);
  // Structured values are named, not printed: they may be huge or deeply nested.
  const std::string got =
      v.is_primitive() ? v.dump().substr(0, 80) : "an " + std::string(v.type_name());
  MOE_FAIL(kOp, origin, ": key '", f.key, "' is ", got, " (", v.type_name(), "), expected ",
           kind_name(f.kind), "; e.g. \"", f.key, "\": ", example.dump());
}

// "1, 2, 4, 8" (the first few and the largest when there are many).
std::string divisors_of(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t g = 1; g * g <= n; ++g)
    if (n % g == 0) {
      d.push_back(g);
      if (g != n / g) d.push_back(n / g);
    }
  std::sort(d.begin(), d.end());
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i == 10 && d.size() > 12) {
      s += ", ..., " + std::to_string(d.back());
      break;
    }
    s += (i ? ", " : "") + std::to_string(d[i]);
  }
  return s;
}

}  // namespace

void ModelConfig::validate() const {
  const char* fix = " in config.json";
  MOE_CHECK(model_type == "moe_cpp" || model_type == "deepseek_v3", kOp, "model_type = \"",
            model_type,
            "\" is not supported; set \"model_type\": \"moe_cpp\" (or \"deepseek_v3\" for a "
            "Hugging Face DeepseekV3 config.json)",
            fix);
  // MLA first: with attention = "mla" head_dim is qk_rope_head_dim, whose own message is the
  // one to read.
  validate_mla();
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"intermediate_size", intermediate_size},
      {"moe_intermediate_size", moe_intermediate_size},
      {"n_routed_experts", n_routed_experts},
      {"num_experts_per_tok", num_experts_per_tok},
      {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [key, v] : sizes) {
    MOE_CHECK(v > 0, kOp, key, " = ", v, " must be positive; set \"", key, "\" to a value >= 1",
              fix);
    MOE_CHECK(v <= kMaxSize, kOp, key, " = ", v, " is too large; use a value <= ", kMaxSize, fix);
  }
  MOE_CHECK(n_shared_experts >= 0 && n_shared_experts <= kMaxSize, kOp,
            "n_shared_experts = ", n_shared_experts, " must be in [0, ", kMaxSize,
            "] (0 = no shared expert)", fix);
  MOE_CHECK(num_attention_heads % num_key_value_heads == 0, kOp,
            "heads not dividing: num_key_value_heads = ", num_key_value_heads,
            " does not divide num_attention_heads = ", num_attention_heads,
            "; choose num_key_value_heads among the divisors of num_attention_heads", fix);
  MOE_CHECK(head_dim % 2 == 0, kOp, "head_dim = ", head_dim,
            " must be even (RoPE rotates pairs); choose an even head_dim", fix);
  MOE_CHECK(num_experts_per_tok <= n_routed_experts, kOp,
            "top-k larger than the expert count: num_experts_per_tok = ", num_experts_per_tok,
            " > n_routed_experts = ", n_routed_experts,
            "; lower num_experts_per_tok or add experts", fix);
  // Group-limited routing.
  MOE_CHECK(n_group >= 1 && n_group <= n_routed_experts, kOp, "n_group = ", n_group,
            " must be in [1, n_routed_experts = ", n_routed_experts,
            "] (1 = no group limit); set \"n_group\" to a divisor of n_routed_experts", fix);
  MOE_CHECK(n_routed_experts % n_group == 0, kOp, "n_group = ", n_group,
            " does not divide n_routed_experts = ", n_routed_experts,
            " (the experts form n_group equal groups); choose n_group among ",
            divisors_of(n_routed_experts), fix);
  MOE_CHECK(topk_group >= 1 && topk_group <= n_group, kOp, "topk_group = ", topk_group,
            " must be in [1, n_group = ", n_group,
            "] (the groups one token may use; topk_group = n_group: no limit)", fix);
  const int64_t reachable = topk_group * (n_routed_experts / n_group);
  MOE_CHECK(num_experts_per_tok <= reachable, kOp, "num_experts_per_tok = ", num_experts_per_tok,
            " > topk_group * (n_routed_experts / n_group) = ", topk_group, " * (", n_routed_experts,
            " / ", n_group, ") = ", reachable,
            ", the experts a token may reach; raise topk_group or lower num_experts_per_tok", fix);
  MOE_CHECK(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers, kOp,
            "first_k_dense_replace = ", first_k_dense_replace,
            " must be in [0, num_hidden_layers = ", num_hidden_layers, "]", fix);
  MOE_CHECK(scoring_func == "softmax" || scoring_func == "sigmoid", kOp, "scoring_func = \"",
            scoring_func, "\" is not supported; use \"softmax\" or \"sigmoid\"", fix);
  // Comparisons with NaN are false, so NaN fails these checks too.
  MOE_CHECK(rms_norm_eps > 0 && std::isfinite(rms_norm_eps), kOp, "rms_norm_eps = ", rms_norm_eps,
            " must be positive, e.g. 1e-6", fix);
  MOE_CHECK(rope_theta > 0 && std::isfinite(rope_theta), kOp, "rope_theta = ", rope_theta,
            " must be positive, e.g. 10000", fix);
  MOE_CHECK(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor), kOp,
            "routed_scaling_factor = ", routed_scaling_factor, " must be positive, e.g. 1.0", fix);
  MOE_CHECK(initializer_range > 0 && std::isfinite(initializer_range), kOp,
            "initializer_range = ", initializer_range, " must be positive, e.g. 0.02", fix);
  MOE_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor), kOp,
            "capacity_factor = ", capacity_factor, " must be >= 0 (0 = dropless, e.g. 1.25)", fix);
  const std::pair<const char*, double> coefs[] = {{"aux_loss_alpha", aux_loss_alpha},
                                                  {"seq_aux_alpha", seq_aux_alpha},
                                                  {"z_loss_coef", z_loss_coef},
                                                  {"bias_update_rate", bias_update_rate}};
  for (const auto& [key, v] : coefs)
    MOE_CHECK(v >= 0 && std::isfinite(v), kOp, key, " = ", v, " must be >= 0 (0 = off)", fix);
  MOE_CHECK(num_nextn_predict_layers >= 0 && num_nextn_predict_layers < max_position_embeddings,
            kOp, "num_nextn_predict_layers = ", num_nextn_predict_layers,
            " must be in [0, max_position_embeddings = ", max_position_embeddings,
            ") (0 = no multi-token prediction; DeepSeek-V3 uses 1)", fix);
  MOE_CHECK(mtp_loss_weight >= 0 && std::isfinite(mtp_loss_weight), kOp,
            "mtp_loss_weight = ", mtp_loss_weight,
            " must be >= 0, e.g. 0.3 (DeepSeek-V3: 0.3, later 0.1)", fix);
}

void ModelConfig::validate_mla() const {
  const char* fix = " in config.json";
  MOE_CHECK(attention == "gqa" || attention == "mla", kOp, "attention = \"", attention,
            "\" is not supported; use \"gqa\" (q/k/v_proj) or \"mla\" (multi-head latent "
            "attention with kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim)",
            fix);
  MOE_CHECK(model_type != "deepseek_v3" || attention == "mla", kOp,
            "model_type = \"deepseek_v3\" with attention = \"", attention,
            "\": DeepSeek-V3 attention is MLA; remove \"attention\" (it is implied) or use "
            "model_type \"moe_cpp\" for GQA",
            fix);
  const std::pair<const char*, int64_t> mla[] = {{"q_lora_rank", q_lora_rank},
                                                 {"kv_lora_rank", kv_lora_rank},
                                                 {"qk_nope_head_dim", qk_nope_head_dim},
                                                 {"qk_rope_head_dim", qk_rope_head_dim},
                                                 {"v_head_dim", v_head_dim}};
  for (const auto& [key, v] : mla) {
    MOE_CHECK(v >= 0 && v <= kMaxSize, kOp, key, " = ", v, " must be in [0, ", kMaxSize,
              "] (0 or null: none)", fix);
    MOE_CHECK(is_mla() || v == 0, kOp, key, " = ", v,
              " is an MLA size but attention = \"gqa\"; set \"attention\": \"mla\" to use "
              "multi-head latent attention, or remove \"",
              key, "\"", fix);
  }
  if (is_mla()) {
    for (const auto& [key, v] : mla) {
      if (std::string(key) == "q_lora_rank") continue;  // 0 (null): direct q_proj
      MOE_CHECK(v >= 1, kOp, "attention = \"mla\" needs ", key, " >= 1 (got ", v, "); set \"", key,
                "\", e.g. DeepSeek-V3's kv_lora_rank 512, qk_nope_head_dim "
                "128, qk_rope_head_dim 64, v_head_dim 128",
                fix);
    }
    MOE_CHECK(qk_rope_head_dim % 2 == 0, kOp, "qk_rope_head_dim = ", qk_rope_head_dim,
              " must be even (RoPE rotates pairs); choose an even qk_rope_head_dim", fix);
    MOE_CHECK(head_dim == qk_rope_head_dim, kOp, "head_dim = ", head_dim,
              " contradicts qk_rope_head_dim = ", qk_rope_head_dim,
              ": with attention = \"mla\" head_dim is the RoPE width (HF DeepseekV3Config sets "
              "head_dim = qk_rope_head_dim); set \"head_dim\": ",
              qk_rope_head_dim, " or remove it", fix);
    MOE_CHECK(num_key_value_heads == num_attention_heads, kOp,
              "num_key_value_heads = ", num_key_value_heads,
              " contradicts num_attention_heads = ", num_attention_heads,
              ": with attention = \"mla\" every head has its own key and value (kv_b_proj); set "
              "\"num_key_value_heads\": ",
              num_attention_heads, " or remove it", fix);
  }
}

double ModelConfig::attn_softmax_scale() const {
  return 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
}

namespace {

// The HF-only keys of one config.json (hf_keys()), checked once every ModelConfig key is read:
// each must describe what moe.cpp implements. `given`: the ModelConfig keys the file sets.
void apply_hf_keys(ModelConfig& c, const nlohmann::json& hf, const std::set<std::string>& given) {
  auto expect = [&](const char* key, const nlohmann::json& want, const char* why) {
    if (!hf.contains(key)) return;
    const auto& v = hf.at(key);
    const bool same =
        v == want || (v.is_number() && want.is_number() && v.get<double>() == want.get<double>());
    MOE_CHECK(same, kOp, key, " = ", v.dump().substr(0, 80), " is not supported: ", why, "; set \"",
              key, "\": ", want.dump(), " or remove it");
  };
  expect("hidden_act", "silu", "every FFN and expert is SwiGLU (silu)");
  expect("attention_bias", false, "projections have no bias");
  expect("mlp_bias", false, "FFN projections have no bias");
  expect("attention_dropout", 0, "there is no dropout");
  expect("moe_layer_freq", 1, "every layer from first_k_dense_replace on is MoE");
  expect("rope_interleave", false,
         "RoPE rotates pairs (i, i + d/2) of the rope dims as the projections produce them (HF "
         "rotate_half); DeepSeek's interleaved layout is the same model with those rows "
         "permuted, so permute them when importing such weights");
  MOE_CHECK(!hf.contains("rope_scaling") || hf.at("rope_scaling").is_null(), kOp,
            "rope_scaling = ", hf.contains("rope_scaling") ? hf.at("rope_scaling").dump() : "",
            " is not supported: YaRN context extension (and its mscale on the softmax scale) is "
            "not implemented; DeepSeek-V3 pre-trains without it. Set \"rope_scaling\": null");
  MOE_CHECK(!hf.contains("quantization_config"), kOp,
            "quantization_config is not supported: moe.cpp checkpoints hold f32 weights (the "
            "training precision is [train] dtype); remove \"quantization_config\"");
  if (hf.contains("qk_head_dim")) {
    const auto& v = hf.at("qk_head_dim");
    MOE_CHECK(c.is_mla() && v.is_number_integer() && v.get<int64_t>() == c.qk_head_dim(), kOp,
              "qk_head_dim = ", v.dump().substr(0, 40), " contradicts ",
              c.is_mla()
                  ? "qk_nope_head_dim + qk_rope_head_dim = " + std::to_string(c.qk_head_dim())
                  : std::string("attention = \"gqa\" (it is an MLA key)"),
              "; remove \"qk_head_dim\" (it is derived)");
  }
  if (hf.contains("topk_method")) {
    const auto& v = hf.at("topk_method");
    const std::string m = v.is_string() ? v.get<std::string>() : v.dump().substr(0, 40);
    MOE_CHECK(m == "noaux_tc" || m == "greedy", kOp, "topk_method = \"", m,
              "\" is not supported: moe.cpp routes as DeepSeek-V3's \"noaux_tc\" (top-K of "
              "s + bias inside the topk_group groups with the best top-2 sums; n_group = 1 is "
              "plain top-K, DeepSeek-V2's \"greedy\"); use one of those two");
    MOE_CHECK(m != "greedy" || c.n_group == 1, kOp,
              "topk_method = \"greedy\" (plain top-K) contradicts n_group = ", c.n_group,
              "; use \"noaux_tc\" for group-limited routing or set n_group to 1");
  }
  // DeepSeek-V2/V3 MoEGate: seq_aux = true makes aux_loss_alpha the sequence-wise coefficient.
  if (hf.contains("seq_aux")) {
    const auto& v = hf.at("seq_aux");
    MOE_CHECK(v.is_boolean(), kOp, "seq_aux = ", v.dump().substr(0, 40),
              " must be true or false (DeepSeek MoEGate: aux_loss_alpha is per sequence if true)");
    if (v.get<bool>()) {
      MOE_CHECK(!given.count("seq_aux_alpha") || c.seq_aux_alpha == 0, kOp,
                "seq_aux = true (aux_loss_alpha = ", c.aux_loss_alpha,
                " is then the sequence-wise coefficient) contradicts seq_aux_alpha = ",
                c.seq_aux_alpha, "; remove \"seq_aux\" or \"seq_aux_alpha\"");
      c.seq_aux_alpha = c.aux_loss_alpha;
      c.aux_loss_alpha = 0;
    }
  }
}

}  // namespace

ModelConfig parse_config(const std::string& json_text, const std::string& origin) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded(), kOp, origin,
            " is not valid JSON; fix the syntax (e.g. trailing commas, unquoted keys)");
  MOE_CHECK(j.is_object(), kOp, origin, " holds a JSON ", j.type_name(),
            ", expected an object of keys such as {\"hidden_size\": 128}");
  ModelConfig c;
  std::set<std::string> given;  // ModelConfig keys the file sets (head_dim: null is not given)
  nlohmann::json hf = nlohmann::json::object();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& fs = fields();
    const auto f =
        std::find_if(fs.begin(), fs.end(), [&](const Field& x) { return it.key() == x.key; });
    // Our own int8 checkpoints describe their weights file here; load_checkpoint reads and
    // checks it (checkpoint.cpp), a model config ignores it. Other quantization_configs (an FP8
    // release) are refused below.
    if (it.key() == "quantization_config" && it->is_object() &&
        it->value("quant_method", "") == "moe.cpp-int8")
      continue;
    if (f == fs.end()) {
      if (!is_hf_key(it.key())) unknown_key(it.key(), origin);
      hf[it.key()] = *it;
      continue;
    }
    if (it.key() == "head_dim" && it->is_null()) continue;  // HF writes null for "derive it"
    set_field(c, *f, *it, origin);
    given.insert(it.key());
  }
  try {
    if (c.model_type == "deepseek_v3") {
      std::string missing;
      for (const auto& [key, hf_default] : deepseek_required())
        if (!given.count(key))
          missing +=
              std::string(missing.empty() ? "" : ", ") + key + " (HF default " + hf_default + ")";
      MOE_CHECK(missing.empty(), kOp, "model_type \"deepseek_v3\" without ", missing,
                ": Hugging Face would read these as DeepSeek-V3-671B's values and moe.cpp as "
                "its own defaults; write them in config.json");
      if (!given.count("attention")) c.attention = "mla";            // implied (see config.h)
      if (!given.count("scoring_func")) c.scoring_func = "sigmoid";  // DeepSeek-V3 routing
    }
    if (c.is_mla()) {
      if (!given.count("head_dim")) c.head_dim = c.qk_rope_head_dim;
      if (!given.count("num_key_value_heads")) c.num_key_value_heads = c.num_attention_heads;
    } else if (!given.count("head_dim") && c.num_attention_heads > 0) {
      MOE_CHECK(c.hidden_size % c.num_attention_heads == 0, kOp,
                "head_dim is absent and hidden_size = ", c.hidden_size,
                " is not divisible by num_attention_heads = ", c.num_attention_heads,
                "; set \"head_dim\" explicitly or choose sizes that divide");
      c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    apply_hf_keys(c, hf, given);
    c.validate();
  } catch (const Error& e) {
    // Prefix the origin: "[config] path: key = ..."
    std::string m = e.what();
    const std::string tag = std::string("[") + kOp + "] ";
    if (m.rfind(tag, 0) == 0) m = m.substr(tag.size());
    MOE_FAIL(kOp, origin, ": ", m);
  }
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  for (const auto& f : fields()) {
    switch (f.kind) {
      case Kind::kString:
        j[f.key] = c.*f.s;
        break;
      case Kind::kInt:
      case Kind::kSize:
        j[f.key] = c.*f.i;
        break;
      case Kind::kBool:
        j[f.key] = c.*f.b;
        break;
      case Kind::kDouble:
        j[f.key] = c.*f.d;
        break;
    }
  }
  return j.dump(2) + "\n";
}

ModelConfig load_config(const std::string& path) {
  std::error_code ec;
  MOE_CHECK(!std::filesystem::is_directory(path, ec), kOp, path,
            " is a directory; pass the config.json inside it");
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), kOp, "cannot read ", path,
            ": no such file or not readable; pass the path of a config.json (or a checkpoint "
            "directory's config.json)");
  std::ostringstream ss;
  ss << in.rdbuf();
  MOE_CHECK(!in.bad(), kOp, "error while reading ", path, "; the file may be damaged");
  return parse_config(ss.str(), path);
}

void save_config(const ModelConfig& cfg, const std::string& path) {
  cfg.validate();
  const std::string text = config_to_json(cfg);
  write_file_atomic(path, {{text.data(), text.size()}});
}

}  // namespace moe
