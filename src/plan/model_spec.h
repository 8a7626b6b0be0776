// The model as the planner sees it: the engine's ModelConfig (which now carries MLA, MTP and
// group-limited routing: DeepSeek-V3 config.json keys, model/config.h) plus a name and a source
// from an optional "plan" object in the same config.json. Parameter counts and FLOPs are the
// engine's (model/flops.h); this file adds the planner's conventions on top (the untrained
// balancing bias counted as stored memory, causal or full attention).
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/flops.h"

namespace moe::plan {

// Keys under "plan" in config.json (all optional). The model's own keys (MLA sizes,
// num_nextn_predict_layers, n_group, topk_group) live at the top level.
struct PlanExtras {
  std::string name;    // e.g. "DeepSeek-V3 671B"
  std::string source;  // where the sizes come from, e.g. "arXiv 2412.19437"
};

struct PlanModel {
  ModelConfig cfg;
  PlanExtras x;
  bool mla() const { return cfg.is_mla(); }
  int64_t mtp_modules() const { return cfg.num_nextn_predict_layers; }
  std::string name() const { return x.name.empty() ? std::string("model") : x.name; }
};

// Reads config.json; the "plan" object (if any) is taken out and the rest goes through the
// engine's parse_config, so unknown keys are errors in both parts. `set` = "key=value,..."
// overrides top-level keys first (moe plan --model-set), e.g. "n_group=2,topk_group=1".
PlanModel load_plan_model(const std::string& path, const std::string& set = "");
PlanModel parse_plan_model(const std::string& json_text, const std::string& origin);
// json_text with the "key=value,..." items of `set` written over its top-level keys.
std::string apply_model_set(const std::string& json_text, const std::string& set,
                            const std::string& origin);

// ---- Parameter counts (elements): model/flops.h's, plus the balancing bias. ---------------
int64_t attn_params(const PlanModel& m);       // moe::attn_params (MLA latent norms included)
int64_t dense_ffn_params(const PlanModel& m);  // 3*D*F (gate, up, down)
int64_t expert_params(const PlanModel& m);     // one routed expert: 3*D*Fe
int64_t shared_params(const PlanModel& m);     // 3*D*(S*Fe)
int64_t router_params(const PlanModel& m);     // E*D + E balancing bias (stored, not trained)
int64_t num_moe_layers(const PlanModel& m);    // L - first_k_dense_replace (main model)
// Layers that run on every token: L plus one MoE-layer block per MTP module.
int64_t num_compute_layers(const PlanModel& m);

struct ParamCounts {
  int64_t total = 0;       // everything stored: moe::count_params().total + the balancing
                           // biases (E per MoE layer, MTP blocks too) = make_layout's floats
  int64_t expert = 0;      // routed experts only (sharded by expert parallelism)
  int64_t non_expert = 0;  // total - expert
  int64_t active = 0;      // moe::count_params().active (MTP modules included)
  int64_t embedding = 0;   // V*D (no matmul FLOPs: a lookup)
  int64_t head = 0;        // V*D (0 extra if tied, but still a matmul)
};
ParamCounts count_params(const PlanModel& m);

// ---- FLOPs per token, forward pass (multiply-add = 2 FLOPs): model/flops.h's. -------------
using TokenFlops = moe::TokenFlops;
double attn_core_flops_per_token_layer(const PlanModel& m, int64_t seq, bool causal);
TokenFlops forward_flops_per_token(const PlanModel& m, int64_t seq, bool causal);
// Model FLOPs of one trained token: 3x forward (backward = 2x forward, Kaplan et al. 2020,
// arXiv 2001.08361, sec. 2.1: C = 6N per token plus attention).
double train_flops_per_token(const PlanModel& m, int64_t seq, bool causal);

}  // namespace moe::plan
