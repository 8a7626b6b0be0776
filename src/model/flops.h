// Parameter counts and FLOPs of a config: the one source of truth for the trainer's MFU,
// `moe info` and the planner (src/plan/model_spec.h delegates here). Every count is a plain
// function of the config, so tests check it against hand counts and against make_layout().
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moe {

// ---- Pieces of one transformer block (elements). ------------------------------------------
// GQA: q [H*Dh, D], k and v [Hkv*Dh, D] each, o [D, H*Dh].
// MLA (DeepSeek-V2, arXiv 2405.04434, sec. 2.1): q_a [rq, D] + q_a_layernorm [rq] + q_b
// [H*(dn+dr), rq] (or q_proj [H*(dn+dr), D] when q_lora_rank is null), kv_a_proj_with_mqa
// [rkv+dr, D], kv_a_layernorm [rkv], kv_b [H*(dn+dv), rkv], o [D, H*dv].
int64_t attn_params(const ModelConfig& c);         // projections + MLA latent norms
int64_t attn_matmul_params(const ModelConfig& c);  // the projections alone (matmul weights)
int64_t dense_ffn_params(const ModelConfig& c);    // 3*D*F (gate, up, down)
int64_t expert_params(const ModelConfig& c);       // one routed expert: 3*D*Fe
int64_t shared_params(const ModelConfig& c);       // 3*D*(S*Fe)
int64_t router_params(const ModelConfig& c);       // E*D (the balancing bias [E] is not trained)
// One MTP module besides its block (DeepSeek-V3 sec. 2.2): enorm [D], hnorm [D], eh_proj
// [D, 2D], shared_head.norm [D]. Embedding and output head are the main model's.
int64_t mtp_extra_params(const ModelConfig& c);

struct ParamCounts {
  int64_t total = 0;           // every trained parameter, MTP modules included (the balancing
                               // bias excluded: it is not trained); = the layout's trained specs
  int64_t active = 0;          // used per token: norms, attention, dense FFNs, shared experts,
                               // routers, K routed experts per MoE layer, lm_head (not the
                               // embedding lookup), and each MTP module's eh_proj, norms, block
  int64_t embedding = 0;       // V*D (and lm_head V*D unless tied)
  int64_t routed_experts = 0;  // all routed experts (MTP blocks' included)
};
// Published totals leave the MTP modules out: count a copy with num_nextn_predict_layers = 0
// for those (moe info prints both).
ParamCounts count_params(const ModelConfig& c);

// ---- FLOPs per token, forward pass (multiply-add = 2 FLOPs). ------------------------------
struct TokenFlops {
  double dense_gemm = 0;   // attention projections (MLA: q_a, q_b or q_proj, kv_a, the kv_b
                           // up-projection of every key and value, o), dense FFNs, shared
                           // experts, MTP eh_proj
  double expert_gemm = 0;  // routed experts (grouped GEMM), K per token per MoE layer
  double head_gemm = 0;    // output head once per depth (main + each MTP module), routers
  double attn_core = 0;    // q.k^T and p.v of every layer (MTP blocks too)
  double total() const { return dense_gemm + expert_gemm + head_gemm + attn_core; }
};
// Attention core per token per layer: 2*T*H*(dqk + dv), dqk = Dh or dn + dr, dv = Dh or dv
// (MLA scores and values after the kv_b up-projection, as training computes them). causal =
// true halves it (the masked half is skipped); PaLM's and Megatron's reported FLOPs use false.
double attn_core_flops_per_token_layer(const ModelConfig& c, int64_t seq, bool causal);
// Every MTP module is counted on every token (it runs on the whole sequence; only its last
// k + 1 positions have no target).
TokenFlops forward_flops_per_token(const ModelConfig& c, int64_t seq, bool causal);

// Matmul FLOPs of one training token (forward + backward = 3x forward), PaLM's convention
// (Chowdhery et al. 2022, appendix B): 6 * (active matmul weights) + 6 * L * 2T*H*(dqk + dv)
// per layer for attention scores and values without the causal saving = 3x the non-causal
// forward above; for GQA without MTP 6 * weights + 12 * L * H * Dh * T. Lookups are free.
double train_flops_per_token(const ModelConfig& c, int64_t seq_len);

}  // namespace moe
