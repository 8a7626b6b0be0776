#include "plan/model_spec.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";

int64_t get_int(const nlohmann::json& p, const std::string& key, int64_t def,
                const std::string& origin) {
  if (!p.contains(key)) return def;
  const auto& v = p.at(key);
  MOE_CHECK(v.is_number_integer(), kOp, origin, ": \"plan\".", key, " is ",
            v.dump().substr(0, 60), ", expected an integer, e.g. \"", key, "\": ", def);
  const int64_t i = v.get<int64_t>();
  MOE_CHECK(i >= 0, kOp, origin, ": \"plan\".", key, " = ", i, " must be >= 0");
  return i;
}

}  // namespace

PlanModel parse_plan_model(const std::string& json_text, const std::string& origin) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded() && j.is_object(), kOp, origin,
            " is not a JSON object of config keys; fix the syntax");
  PlanModel m;
  // Node-limited routing may also be given as top-level keys (the trainer's [model] n_group and
  // topk_group); they are taken out here so parse_config sees only the engine's keys, and a
  // "plan" object below overrides them.
  for (const char* k : {"n_group", "topk_group"}) {
    if (!j.contains(k)) continue;
    const auto& v = j.at(k);
    MOE_CHECK(v.is_number_integer() && v.get<int64_t>() >= 1, kOp, origin, ": ", k, " is ",
              v.dump().substr(0, 60), ", expected an integer >= 1, e.g. \"", k, "\": 2");
    (std::string(k) == "n_group" ? m.x.n_group : m.x.topk_group) = v.get<int64_t>();
    j.erase(k);
  }
  if (j.contains("plan")) {
    const nlohmann::json p = j.at("plan");
    MOE_CHECK(p.is_object(), kOp, origin, ": \"plan\" must be an object, e.g. \"plan\": "
              "{\"kv_lora_rank\": 512}");
    static const char* kKeys[] = {"name", "source", "q_lora_rank", "kv_lora_rank",
                                  "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                  "num_nextn_predict_layers", "n_group", "topk_group", "notes"};
    for (auto it = p.begin(); it != p.end(); ++it) {
      bool known = false;
      for (const char* k : kKeys) known = known || it.key() == k;
      std::string list;
      for (const char* k : kKeys) list += (list.empty() ? "" : ", ") + std::string(k);
      MOE_CHECK(known, kOp, origin, ": unknown key \"plan\".", it.key(), " (known: ", list, ")");
    }
    if (p.contains("name")) m.x.name = p.at("name").get<std::string>();
    if (p.contains("source")) m.x.source = p.at("source").get<std::string>();
    m.x.q_lora_rank = get_int(p, "q_lora_rank", 0, origin);
    m.x.kv_lora_rank = get_int(p, "kv_lora_rank", 0, origin);
    m.x.qk_nope_head_dim = get_int(p, "qk_nope_head_dim", 0, origin);
    m.x.qk_rope_head_dim = get_int(p, "qk_rope_head_dim", 0, origin);
    m.x.v_head_dim = get_int(p, "v_head_dim", 0, origin);
    m.x.num_nextn_predict_layers = get_int(p, "num_nextn_predict_layers", 0, origin);
    m.x.n_group = get_int(p, "n_group", m.x.n_group, origin);
    m.x.topk_group = get_int(p, "topk_group", m.x.topk_group, origin);
    j.erase("plan");
  }
  m.cfg = parse_config(j.dump(), origin);
  const auto& x = m.x;
  if (m.mla())
    MOE_CHECK(x.qk_nope_head_dim > 0 && x.qk_rope_head_dim > 0 && x.v_head_dim > 0, kOp, origin,
              ": MLA (kv_lora_rank > 0) needs qk_nope_head_dim, qk_rope_head_dim and v_head_dim");
  MOE_CHECK(x.n_group >= 1 && m.cfg.n_routed_experts % x.n_group == 0 &&
                x.topk_group >= 1 && x.topk_group <= x.n_group,
            kOp, origin, ": n_group = ", x.n_group, " must divide n_routed_experts = ",
            m.cfg.n_routed_experts, " and topk_group = ", x.topk_group, " must be in [1, n_group]");
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

int64_t attn_params(const PlanModel& m) {
  const auto& c = m.cfg;
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  if (!m.mla()) {
    const int64_t Dh = c.head_dim, Hkv = c.num_key_value_heads;
    return D * H * Dh + 2 * D * Hkv * Dh + H * Dh * D;
  }
  const auto& x = m.x;
  const int64_t dqk = x.qk_nope_head_dim + x.qk_rope_head_dim;
  const int64_t q = x.q_lora_rank > 0 ? D * x.q_lora_rank + x.q_lora_rank * H * dqk + x.q_lora_rank
                                      : D * H * dqk;
  const int64_t kv = D * (x.kv_lora_rank + x.qk_rope_head_dim) +
                     x.kv_lora_rank * H * (x.qk_nope_head_dim + x.v_head_dim) + x.kv_lora_rank;
  return q + kv + H * x.v_head_dim * D;
}

int64_t dense_ffn_params(const PlanModel& m) {
  return 3 * m.cfg.hidden_size * m.cfg.intermediate_size;
}
int64_t expert_params(const PlanModel& m) {
  return 3 * m.cfg.hidden_size * m.cfg.moe_intermediate_size;
}
int64_t shared_params(const PlanModel& m) { return 3 * m.cfg.hidden_size * m.cfg.shared_width(); }
int64_t router_params(const PlanModel& m) {
  return m.cfg.n_routed_experts * m.cfg.hidden_size + m.cfg.n_routed_experts;
}
int64_t num_moe_layers(const PlanModel& m) {
  return m.cfg.num_hidden_layers - m.cfg.first_k_dense_replace;
}
int64_t num_compute_layers(const PlanModel& m) {
  return m.cfg.num_hidden_layers + m.x.num_nextn_predict_layers;
}
int64_t mtp_extra_params(const PlanModel& m) {
  const int64_t D = m.cfg.hidden_size;
  return 2 * D * D + 2 * D;  // eh_proj [D, 2D] + enorm + hnorm
}

ParamCounts count_params(const PlanModel& m) {
  const auto& c = m.cfg;
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t norms = 2 * D;  // input_layernorm + post_attention_layernorm
  const int64_t L = c.num_hidden_layers, Lm = num_moe_layers(m), Ld = L - Lm;
  const int64_t Lmtp = m.x.num_nextn_predict_layers;  // each adds one MoE block
  const int64_t moe_nonexp = shared_params(m) + router_params(m);
  ParamCounts p;
  p.embedding = c.vocab_size * D;
  p.head = c.tie_word_embeddings ? 0 : c.vocab_size * D;
  p.expert = (Lm + Lmtp) * E * expert_params(m);
  p.total = p.embedding + p.head + D /* final norm */ +
            L * (attn_params(m) + norms) + Ld * dense_ffn_params(m) +
            (Lm + Lmtp) * moe_nonexp + p.expert +
            Lmtp * (attn_params(m) + norms + mtp_extra_params(m) + D /* its final norm */);
  p.non_expert = p.total - p.expert;
  // Active: what one token's matmuls read (norms and biases are not matmuls; the head counts).
  p.active = c.vocab_size * D + L * attn_params(m) + Ld * dense_ffn_params(m) +
             (Lm + Lmtp) * (shared_params(m) + E * D + K * expert_params(m)) +
             Lmtp * (attn_params(m) + 2 * D * D);
  return p;
}

double attn_core_flops_per_token_layer(const PlanModel& m, int64_t seq, bool causal) {
  const auto& c = m.cfg;
  const int64_t dqk = m.mla() ? m.x.qk_nope_head_dim + m.x.qk_rope_head_dim : c.head_dim;
  const int64_t dv = m.mla() ? m.x.v_head_dim : c.head_dim;
  const double full = 2.0 * static_cast<double>(seq) * c.num_attention_heads * (dqk + dv);
  return causal ? 0.5 * full : full;
}

TokenFlops forward_flops_per_token(const PlanModel& m, int64_t seq, bool causal) {
  const auto& c = m.cfg;
  const double D = static_cast<double>(c.hidden_size);
  const int64_t L = c.num_hidden_layers, Lm = num_moe_layers(m), Ld = L - Lm;
  const int64_t Lmtp = m.x.num_nextn_predict_layers;
  const int64_t Lmoe = Lm + Lmtp, Lall = L + Lmtp;
  // Attention projections: their parameters minus the latent norms (which are not matmuls).
  const double attn_w = static_cast<double>(attn_params(m)) -
                        (m.mla() ? static_cast<double>(m.x.q_lora_rank + m.x.kv_lora_rank) : 0.0);
  TokenFlops f;
  f.dense_gemm = 2.0 * (Lall * attn_w + Ld * static_cast<double>(dense_ffn_params(m)) +
                        Lmoe * static_cast<double>(shared_params(m)) + Lmtp * 2.0 * D * D);
  f.expert_gemm = 2.0 * Lmoe * c.num_experts_per_tok * static_cast<double>(expert_params(m));
  // One output head for the main model and one per MTP module; router E*D per MoE block.
  f.head_gemm = 2.0 * (1 + Lmtp) * static_cast<double>(c.vocab_size) * D +
                2.0 * Lmoe * static_cast<double>(c.n_routed_experts) * D;
  f.attn_core = Lall * attn_core_flops_per_token_layer(m, seq, causal);
  return f;
}

double train_flops_per_token(const PlanModel& m, int64_t seq, bool causal) {
  return 3.0 * forward_flops_per_token(m, seq, causal).total();
}

}  // namespace moe::plan
