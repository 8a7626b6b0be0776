// The model as the planner sees it: the engine's ModelConfig plus the few paper-scale features
// the engine lacks (multi-head latent attention, multi-token prediction, group-limited routing),
// read from a "plan" object in the same config.json. Every count below is a plain function of
// the config so tests can check it against hand-computed values.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace moe::plan {

// Keys under "plan" in config.json (all optional; zeros mean "feature absent").
struct PlanExtras {
  std::string name;                      // e.g. "DeepSeek-V3 671B"
  std::string source;                    // where the sizes come from, e.g. "arXiv 2412.19437"
  int64_t q_lora_rank = 0;               // MLA query compression, e.g. 1536 (0 = no MLA)
  int64_t kv_lora_rank = 0;              // MLA key/value compression, e.g. 512
  int64_t qk_nope_head_dim = 0;          // e.g. 128
  int64_t qk_rope_head_dim = 0;          // e.g. 64
  int64_t v_head_dim = 0;                // e.g. 128
  int64_t num_nextn_predict_layers = 0;  // multi-token prediction modules, e.g. 1
  int64_t n_group = 1;                   // expert groups (node-limited routing), e.g. 8
  int64_t topk_group = 1;                // groups one token may use, e.g. 4
};

struct PlanModel {
  ModelConfig cfg;
  PlanExtras x;
  bool mla() const { return x.kv_lora_rank > 0; }
  std::string name() const { return x.name.empty() ? std::string("model") : x.name; }
};

// Reads config.json; the "plan" object (if any) and top-level n_group/topk_group (the trainer's
// node-limited routing keys) are taken out and the rest goes through the engine's
// parse_config, so unknown keys are errors in both parts. `set` = "key=value,..." overrides
// top-level keys first (moe plan --model-set), e.g. "n_group=2,topk_group=1".
PlanModel load_plan_model(const std::string& path, const std::string& set = "");
PlanModel parse_plan_model(const std::string& json_text, const std::string& origin);
// json_text with the "key=value,..." items of `set` written over its top-level keys.
std::string apply_model_set(const std::string& json_text, const std::string& set,
                            const std::string& origin);

// ---- Parameter counts (elements). Norm weights are counted; biases do not exist. ----------
// GQA: q D*H*Dh, k and v D*Hkv*Dh each, o H*Dh*D.
// MLA (DeepSeek-V2, arXiv 2405.04434, sec. 2.1): q_a D*rq, q_b rq*H*(dn+dr), kv_a D*(rkv+dr),
// kv_b rkv*H*(dn+dv), o H*dv*D, plus the two latent norms rq + rkv.
int64_t attn_params(const PlanModel& m);
int64_t dense_ffn_params(const PlanModel& m);   // 3*D*F (gate, up, down)
int64_t expert_params(const PlanModel& m);      // one routed expert: 3*D*Fe
int64_t shared_params(const PlanModel& m);      // 3*D*(S*Fe)
int64_t router_params(const PlanModel& m);      // E*D (+E balancing bias)
int64_t num_moe_layers(const PlanModel& m);     // L - first_k_dense_replace
// Layers that run on every token: L plus one MoE-layer-sized block per MTP module.
int64_t num_compute_layers(const PlanModel& m);
// One MTP module (DeepSeek-V3 sec. 2.2): a projection [D, 2D], two norms and one MoE block;
// embedding and output head are shared with the main model.
int64_t mtp_extra_params(const PlanModel& m);

struct ParamCounts {
  int64_t total = 0;       // everything
  int64_t expert = 0;      // routed experts only (sharded by expert parallelism)
  int64_t non_expert = 0;  // total - expert
  int64_t active = 0;      // parameters one token's matmuls touch (K routed experts)
  int64_t embedding = 0;   // V*D (no matmul FLOPs: a lookup)
  int64_t head = 0;        // V*D (0 extra if tied, but still a matmul)
};
ParamCounts count_params(const PlanModel& m);

// ---- FLOPs per token, forward pass (multiply-add = 2 FLOPs). -----------------------------
// Matmul FLOPs split by the kind of kernel that runs them.
struct TokenFlops {
  double dense_gemm = 0;    // attention projections, dense FFN, shared experts, MTP projection
  double expert_gemm = 0;   // routed experts (grouped GEMM), K per token
  double head_gemm = 0;     // output head(s) and router (kept in bf16 even in fp8 runs)
  double attn_core = 0;     // QK^T and PV
  double total() const { return dense_gemm + expert_gemm + head_gemm + attn_core; }
};
// Attention core per token per layer: 2*T*H*(dqk + dv) for full attention; causal masking
// halves the useful work (FlashAttention skips the masked blocks), so causal = true
// multiplies by 1/2. (Megatron-LM's reported TFLOP/s count full T; causal = false matches.)
double attn_core_flops_per_token_layer(const PlanModel& m, int64_t seq, bool causal);
TokenFlops forward_flops_per_token(const PlanModel& m, int64_t seq, bool causal);
// Model FLOPs of one trained token: 3x forward (backward = 2x forward, Kaplan et al. 2020,
// arXiv 2001.08361, sec. 2.1: C = 6N per token plus attention).
double train_flops_per_token(const PlanModel& m, int64_t seq, bool causal);

}  // namespace moe::plan
