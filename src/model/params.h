// Parameter layout (DESIGN.md section 2): one flat arena, carved into named views with HF names
// and [out, in] shapes. Two regions: replicated (everything but routed experts) first, then
// expert (routed experts, the part sharded across expert-parallel ranks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace moe {

enum class Region { kReplicated, kExpert };

struct ParamSpec {
  std::string name;            // HF name, e.g. "model.layers.1.mlp.experts.3.up_proj.weight"
  std::vector<int64_t> shape;  // e.g. {Fe, D}
  int64_t offset = 0;          // floats from the arena start
  int64_t numel = 0;
  Region region = Region::kReplicated;
  int64_t layer = -1;     // -1 for embeddings / final norm / lm_head
  int64_t expert = -1;    // routed expert id, -1 otherwise
  bool decay = true;      // takes weight decay (false: norms, biases)
  bool trainable = true;  // false: the balancing bias (updated by its own rule)
  double init_std = 0.0;  // normal(0, init_std); 0 with init_one = false means zeros
  bool init_one = false;  // RMSNorm weights start at 1
};

// Offsets (in floats) of one layer's tensors inside the arena; -1 where the layer has no such
// tensor. Sizes: D hidden, H heads; GQA Hkv, Dh; MLA rq = q_lora_rank, rkv = kv_lora_rank,
// dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim.
struct LayerOffsets {
  int64_t input_norm = -1, post_norm = -1;  // [D]
  // GQA (attention = "gqa"): q_proj [H*Dh, D], k_proj [Hkv*Dh, D], v_proj [Hkv*Dh, D], adjacent
  int64_t qkv = -1;
  // MLA (attention = "mla", DeepSeek-V2/V3 names under self_attn.):
  int64_t q_a = -1;        // q_a_proj [rq, D]                       (q_lora_rank > 0)
  int64_t q_a_norm = -1;   // q_a_layernorm [rq]                     (q_lora_rank > 0)
  int64_t q_b = -1;        // q_b_proj [H*(dn+dr), rq]               (q_lora_rank > 0)
  int64_t q_proj = -1;     // q_proj [H*(dn+dr), D]                  (q_lora_rank null)
  int64_t kv_a = -1;       // kv_a_proj_with_mqa [rkv+dr, D]: rows [0, rkv) latent, then k_pe
  int64_t kv_a_norm = -1;  // kv_a_layernorm [rkv]
  int64_t kv_b = -1;       // kv_b_proj [H*(dn+dv), rkv]: per head h rows [h*(dn+dv), +dn) k_nope,
                           //   then dv rows of v
  int64_t o_proj = -1;     // [D, H*Dh] (GQA) or [D, H*dv] (MLA)
  // dense FFN (layer < first_k_dense_replace): gate_proj [F,D], up_proj [F,D] adjacent; down [D,F]
  int64_t mlp_gu = -1, mlp_down = -1;
  // MoE: router [E,D], balancing bias [E], shared gate/up [S*Fe, D] x2 adjacent, shared down
  // [D, S*Fe], routed experts: E blocks of (gate [Fe,D], up [Fe,D], down [D,Fe]).
  int64_t router = -1, bias = -1, shared_gu = -1, shared_down = -1, experts = -1;
};

// One multi-token-prediction module k in [0, D) (DeepSeek-V3 sec. 2.2; checkpoint names
// model.layers.{L+k}.*). Its transformer block (attention + MoE, the same tensors as a main
// layer) is ParamLayout::layers[L + k]. The embedding and the output head are the main model's
// (shared_head.head and embed_tokens are not separate parameters here).
struct MtpOffsets {
  int64_t enorm = -1;      // enorm [D]: RMSNorm of the embedding of token i + k + 1
  int64_t hnorm = -1;      // hnorm [D]: RMSNorm of the previous depth's representation
  int64_t eh_proj = -1;    // eh_proj [D, 2D]: input [enorm(e); hnorm(h)], embedding first
  int64_t head_norm = -1;  // shared_head.norm [D]: the norm before the shared output head
};
// Which part of the model one rank holds (expert parallelism) and how its regions are padded
// (ZeRO shards split each region into equal parts). The defaults give the whole model.
struct LayoutOptions {
  int64_t expert_first = 0;   // first routed expert held, e.g. 4 (rank 1 of ep 2 with E = 8)
  int64_t expert_count = -1;  // routed experts held per MoE layer, e.g. 4 (-1 = all E)
  int64_t align = 1;          // each region starts and ends at a multiple of this many floats
};

struct ParamLayout {
  std::vector<ParamSpec> specs;
  std::vector<LayerOffsets> layers;  // L main layers, then the D MTP blocks (index L + k)
  std::vector<MtpOffsets> mtp;       // D MTP modules (num_nextn_predict_layers)
  int64_t embed = 0, final_norm = 0, lm_head = 0;  // lm_head == embed when tied
  int64_t replicated_numel = 0;                    // region [0, replicated_numel)
  int64_t total_numel = 0;                         // expert region [replicated_numel, total)
  int64_t expert_block = 0;                        // floats per routed expert: 3*Fe*D
  int64_t expert_first = 0, experts_local = 0;     // routed experts held: [first, first+local)
  // Floats between replicated_numel and the expert region's start (LayoutOptions::align).
  int64_t expert_begin = 0;  // expert region [expert_begin, total_numel)

  const ParamSpec* find(const std::string& name) const;
};

// Order in the arena. Replicated region: embed_tokens; per layer input_layernorm, attention
// (GQA q|k|v, o; MLA q_a, q_a_layernorm, q_b (or q_proj), kv_a_proj_with_mqa, kv_a_layernorm,
// kv_b, o), post_attention_layernorm, dense FFN or router, bias, shared experts; model.norm;
// lm_head (absent when tied); then per MTP module enorm, hnorm, eh_proj, its block's tensors as
// above, shared_head.norm. Expert region: the routed experts of each MoE layer, main layers
// first, then the MTP blocks. GQA without MTP: exactly the layout before MLA/MTP existed.
// Init: normal(0, initializer_range); o_proj and every down_proj (MTP blocks too) normal(0,
// initializer_range / sqrt(2 num_hidden_layers)) as they add into the residual stream; eh_proj
// initializer_range (it starts a stream, adds to none); norms 1; no weight decay on norms.
ParamLayout make_layout(const ModelConfig& cfg, const LayoutOptions& opt = {});

// A linear layer's [out, in] weight: every "*_proj.weight" (attention, dense FFN, shared and
// routed experts, MTP's eh_proj) and MLA's "kv_a_proj_with_mqa.weight". Not the router (mlp.gate.weight), the embedding or lm_head. These are the
// weights that low-precision GEMMs (model/gemms.h) and INT8 (model/quantized.h) take.
bool is_linear_weight(const ParamSpec& spec);

}  // namespace moe
