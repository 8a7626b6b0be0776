#include "plan/model_spec.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";

}  // namespace

PlanModel parse_plan_model(const std::string& json_text, const std::string& origin) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded() && j.is_object(), kOp, origin,
            " is not a JSON object of config keys; fix the syntax");
  PlanModel m;
  if (j.contains("plan")) {
    const nlohmann::json p = j.at("plan");
    MOE_CHECK(p.is_object(), kOp, origin,
              ": \"plan\" must be an object, e.g. \"plan\": {\"name\": \"DeepSeek-V3\"}");
    for (auto it = p.begin(); it != p.end(); ++it) {
      const std::string& k = it.key();
      const bool moved = k == "q_lora_rank" || k == "kv_lora_rank" || k == "qk_nope_head_dim" ||
                         k == "qk_rope_head_dim" || k == "v_head_dim" ||
                         k == "num_nextn_predict_layers" || k == "n_group" || k == "topk_group";
      MOE_CHECK(!moved, kOp, origin, ": \"plan\".", k,
                " is a model key now: move it to the top level of config.json (with "
                "\"attention\": \"mla\" for the MLA sizes)");
      MOE_CHECK(k == "name" || k == "source" || k == "notes", kOp, origin,
                ": unknown key \"plan\".", k, " (known: name, source, notes)");
      MOE_CHECK(it->is_string(), kOp, origin, ": \"plan\".", k, " must be a string");
    }
    if (p.contains("name")) m.x.name = p.at("name").get<std::string>();
    if (p.contains("source")) m.x.source = p.at("source").get<std::string>();
    j.erase("plan");
  }
  m.cfg = parse_config(j.dump(), origin);
  return m;
}

std::string apply_model_set(const std::string& json_text, const std::string& set,
                            const std::string& origin) {
  if (set.empty()) return json_text;
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded() && j.is_object(), kOp, origin,
            " is not a JSON object of config keys; fix the syntax");
  std::stringstream ss(set);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    MOE_CHECK(eq != std::string::npos && eq > 0, kOp, "--model-set item '", item,
              "' is not key=value; use e.g. --model-set n_group=2,topk_group=1");
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    // A JSON literal (number, true/false) if it parses as one, else a string.
    nlohmann::json jv = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
    if (jv.is_discarded() || jv.is_object() || jv.is_array()) jv = v;
    j[k] = jv;
  }
  return j.dump();
}

PlanModel load_plan_model(const std::string& path, const std::string& set) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), kOp, "cannot read model config ", path,
            "; pass a config.json such as configs/models/deepseek_v3.json");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string origin = set.empty() ? path : path + " + --model-set " + set;
  return parse_plan_model(apply_model_set(ss.str(), set, origin), origin);
}

int64_t attn_params(const PlanModel& m) { return moe::attn_params(m.cfg); }
int64_t dense_ffn_params(const PlanModel& m) { return moe::dense_ffn_params(m.cfg); }
int64_t expert_params(const PlanModel& m) { return moe::expert_params(m.cfg); }
int64_t shared_params(const PlanModel& m) { return moe::shared_params(m.cfg); }
int64_t router_params(const PlanModel& m) {
  return moe::router_params(m.cfg) + m.cfg.n_routed_experts;
}
int64_t num_moe_layers(const PlanModel& m) {
  return m.cfg.num_hidden_layers - m.cfg.first_k_dense_replace;
}
int64_t num_compute_layers(const PlanModel& m) {
  return m.cfg.num_hidden_layers + m.cfg.num_nextn_predict_layers;
}

ParamCounts count_params(const PlanModel& m) {
  const auto& c = m.cfg;
  const moe::ParamCounts e = moe::count_params(c);
  const int64_t moe_blocks = num_moe_layers(m) + c.num_nextn_predict_layers;
  ParamCounts p;
  p.total = e.total + moe_blocks * c.n_routed_experts;  // + the balancing biases
  p.expert = e.routed_experts;
  p.non_expert = p.total - p.expert;
  p.active = e.active;
  p.embedding = c.vocab_size * c.hidden_size;
  p.head = c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size;
  return p;
}

double attn_core_flops_per_token_layer(const PlanModel& m, int64_t seq, bool causal) {
  return moe::attn_core_flops_per_token_layer(m.cfg, seq, causal);
}

TokenFlops forward_flops_per_token(const PlanModel& m, int64_t seq, bool causal) {
  return moe::forward_flops_per_token(m.cfg, seq, causal);
}

double train_flops_per_token(const PlanModel& m, int64_t seq, bool causal) {
  return 3.0 * forward_flops_per_token(m, seq, causal).total();
}

}  // namespace moe::plan
