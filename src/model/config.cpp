#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"

namespace moe {

namespace {

constexpr const char* kOp = "config";
// Every size must fit in int32 (kernels index with it) and products of sizes in int64.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

enum class Kind { kString, kInt, kBool, kDouble };

// One config.json key and the ModelConfig member it fills.
struct Field {
  const char* key;
  Kind kind;
  std::string ModelConfig::*s = nullptr;
  int64_t ModelConfig::*i = nullptr;
  bool ModelConfig::*b = nullptr;
  double ModelConfig::*d = nullptr;
};

Field str_f(const char* k, std::string ModelConfig::*m) { return {k, Kind::kString, m, {}, {}, {}}; }
Field int_f(const char* k, int64_t ModelConfig::*m) { return {k, Kind::kInt, {}, m, {}, {}}; }
Field bool_f(const char* k, bool ModelConfig::*m) { return {k, Kind::kBool, {}, {}, m, {}}; }
Field dbl_f(const char* k, double ModelConfig::*m) { return {k, Kind::kDouble, {}, {}, {}, m}; }

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
  };
  return f;
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
  const bool close = best_d <= std::max<size_t>(3, key.size() / 3);
  MOE_FAIL(kOp, origin, ": unknown key '", key.substr(0, 80), "'",
           close ? "; did you mean '" + best + "'?" : std::string("; remove it"),
           " (known keys: ", known, ")");
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kString: return "a string";
    case Kind::kInt: return "an integer";
    case Kind::kBool: return "a boolean (true/false)";
    case Kind::kDouble: return "a number";
  }
  return "?";
}

void set_field(ModelConfig& c, const Field& f, const nlohmann::json& v, const std::string& origin) {
  bool ok = false;
  switch (f.kind) {
    case Kind::kString:
      if ((ok = v.is_string())) c.*f.s = v.get<std::string>();
      break;
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
                                 : f.kind == Kind::kInt  ? nlohmann::json(d.*f.i)
                                 : f.kind == Kind::kBool ? nlohmann::json(d.*f.b)
                                                         : nlohmann::json(d.*f.d);
  // Structured values are named, not printed: they may be huge or deeply nested.
  const std::string got = v.is_primitive() ? v.dump().substr(0, 80) : "an " + std::string(v.type_name());
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
  MOE_CHECK(model_type == "moe_cpp", kOp, "model_type = \"", model_type,
            "\" is not supported; set \"model_type\": \"moe_cpp\"", fix);
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
            " > topk_group * (n_routed_experts / n_group) = ", topk_group, " * (",
            n_routed_experts, " / ", n_group, ") = ", reachable,
            ", the experts a token may reach; raise topk_group or lower num_experts_per_tok",
            fix);
  MOE_CHECK(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers, kOp,
            "first_k_dense_replace = ", first_k_dense_replace, " must be in [0, num_hidden_layers = ",
            num_hidden_layers, "]", fix);
  MOE_CHECK(scoring_func == "softmax" || scoring_func == "sigmoid", kOp, "scoring_func = \"",
            scoring_func, "\" is not supported; use \"softmax\" or \"sigmoid\"", fix);
  // Comparisons with NaN are false, so NaN fails these checks too.
  MOE_CHECK(rms_norm_eps > 0 && std::isfinite(rms_norm_eps), kOp, "rms_norm_eps = ",
            rms_norm_eps, " must be positive, e.g. 1e-6", fix);
  MOE_CHECK(rope_theta > 0 && std::isfinite(rope_theta), kOp, "rope_theta = ", rope_theta,
            " must be positive, e.g. 10000", fix);
  MOE_CHECK(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor), kOp,
            "routed_scaling_factor = ", routed_scaling_factor, " must be positive, e.g. 1.0", fix);
  MOE_CHECK(initializer_range > 0 && std::isfinite(initializer_range), kOp,
            "initializer_range = ", initializer_range, " must be positive, e.g. 0.02", fix);
  MOE_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor), kOp, "capacity_factor = ",
            capacity_factor, " must be >= 0 (0 = dropless, e.g. 1.25)", fix);
  const std::pair<const char*, double> coefs[] = {{"aux_loss_alpha", aux_loss_alpha},
                                                  {"seq_aux_alpha", seq_aux_alpha},
                                                  {"z_loss_coef", z_loss_coef},
                                                  {"bias_update_rate", bias_update_rate}};
  for (const auto& [key, v] : coefs)
    MOE_CHECK(v >= 0 && std::isfinite(v), kOp, key, " = ", v, " must be >= 0 (0 = off)", fix);
}

ModelConfig parse_config(const std::string& json_text, const std::string& origin) {
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded(), kOp, origin,
            " is not valid JSON; fix the syntax (e.g. trailing commas, unquoted keys)");
  MOE_CHECK(j.is_object(), kOp, origin, " holds a JSON ", j.type_name(),
            ", expected an object of keys such as {\"hidden_size\": 128}");
  ModelConfig c;
  bool has_head_dim = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& fs = fields();
    const auto f = std::find_if(fs.begin(), fs.end(),
                                [&](const Field& x) { return it.key() == x.key; });
    // Hugging Face keys that describe the weights file, not the model: load_checkpoint reads
    // and checks them (checkpoint.cpp); a model config ignores them.
    if (it.key() == "torch_dtype" || it.key() == "quantization_config") continue;
    if (f == fs.end()) unknown_key(it.key(), origin);
    if (it.key() == "head_dim" && it->is_null()) continue;  // HF writes null for "derive it"
    set_field(c, *f, *it, origin);
    if (it.key() == "head_dim") has_head_dim = true;
  }
  if (!has_head_dim && c.num_attention_heads > 0) {
    MOE_CHECK(c.hidden_size % c.num_attention_heads == 0, kOp, origin,
              ": head_dim is absent and hidden_size = ", c.hidden_size,
              " is not divisible by num_attention_heads = ", c.num_attention_heads,
              "; set \"head_dim\" explicitly or choose sizes that divide");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  try {
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
      case Kind::kString: j[f.key] = c.*f.s; break;
      case Kind::kInt: j[f.key] = c.*f.i; break;
      case Kind::kBool: j[f.key] = c.*f.b; break;
      case Kind::kDouble: j[f.key] = c.*f.d; break;
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
