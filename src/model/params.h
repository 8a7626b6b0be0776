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
  int64_t layer = -1;          // -1 for embeddings / final norm / lm_head
  int64_t expert = -1;         // routed expert id, -1 otherwise
  bool decay = true;           // takes weight decay (false: norms, biases)
  bool trainable = true;       // false: the balancing bias (updated by its own rule)
  double init_std = 0.0;       // normal(0, init_std); 0 with init_one = false means zeros
  bool init_one = false;       // RMSNorm weights start at 1
};

// Offsets (in floats) of one layer's tensors inside the arena.
struct LayerOffsets {
  int64_t input_norm, post_norm;  // [D]
  int64_t qkv;                    // q_proj [H*Dh, D], k_proj [Hkv*Dh, D], v_proj [Hkv*Dh, D], adjacent
  int64_t o_proj;                 // [D, H*Dh]
  // dense FFN (layer < first_k_dense_replace): gate_proj [F,D], up_proj [F,D] adjacent; down [D,F]
  int64_t mlp_gu = -1, mlp_down = -1;
  // MoE: router [E,D], balancing bias [E], shared gate/up [S*Fe, D] x2 adjacent, shared down
  // [D, S*Fe], routed experts: E blocks of (gate [Fe,D], up [Fe,D], down [D,Fe]).
  int64_t router = -1, bias = -1, shared_gu = -1, shared_down = -1, experts = -1;
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
  std::vector<LayerOffsets> layers;
  int64_t embed = 0, final_norm = 0, lm_head = 0;  // lm_head == embed when tied
  int64_t replicated_numel = 0;                    // region [0, replicated_numel)
  int64_t total_numel = 0;                         // expert region [replicated_numel, total)
  int64_t expert_block = 0;                        // floats per routed expert: 3*Fe*D
  int64_t expert_first = 0, experts_local = 0;     // routed experts held: [first, first+local)
  // Floats between replicated_numel and the expert region's start (LayoutOptions::align).
  int64_t expert_begin = 0;                        // expert region [expert_begin, total_numel)

  const ParamSpec* find(const std::string& name) const;
};

ParamLayout make_layout(const ModelConfig& cfg, const LayoutOptions& opt = {});

}  // namespace moe
