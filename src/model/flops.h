// Parameter counts and training FLOPs of a config (used for MFU, `moe info` and the planner).
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moe {

struct ParamCounts {
  int64_t total = 0;         // every parameter (the balancing bias excluded: it is not trained)
  int64_t active = 0;        // used per token: embedding row, attention, dense FFNs, shared
                             // experts, the router and K routed experts per MoE layer
  int64_t embedding = 0;     // V*D (and lm_head V*D unless tied)
  int64_t routed_experts = 0;
};
ParamCounts count_params(const ModelConfig& c);

// Matmul FLOPs of one training token (forward + backward = 3x forward), PaLM's convention
// (Chowdhery et al. 2022, appendix B): 6 * (active matmul weights) + 12 * L * H * Dh * T for
// attention scores and values without the causal saving. Embedding lookups are free.
double train_flops_per_token(const ModelConfig& c, int64_t seq_len);

}  // namespace moe
