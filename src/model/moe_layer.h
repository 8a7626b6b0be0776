// The MoE feed-forward layer (DESIGN.md sections 3 and 9): route -> dispatch -> experts ->
// combine, plus shared experts and the auxiliary balancing terms, forward and backward.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/gemms.h"
#include "model/token_dispatcher.h"

namespace moe {

// Views into the parameter arena (see params.h LayerOffsets).
struct MoeWeights {
  const float* router = nullptr;       // [E, D]
  const float* bias = nullptr;         // [E] balancing bias, used only for selection
  // El blocks of 3*Fe*D: gate [Fe,D], up [Fe,D], down [D,Fe], for the dispatcher's local
  // experts (all E on one process)
  const float* experts = nullptr;
  const float* shared_gu = nullptr;    // [2*S*Fe, D] gate rows then up rows (null if S = 0)
  const float* shared_down = nullptr;  // [D, S*Fe] (null if S = 0)
  Gemms* gemms = nullptr;  // runs the expert and shared GEMMs (null: f32); the router is f32
};
struct MoeGrads {  // accumulated (+=), same shapes as MoeWeights
  float* router = nullptr;
  float* experts = nullptr;
  float* shared_gu = nullptr;
  float* shared_down = nullptr;
};

// Made by route(), reused by backward.
struct RoutingPlan {
  std::vector<int32_t> topk_idx;      // (N, K) chosen experts, by descending s + b
  std::vector<float> topk_w;          // (N, K) gate weight (after norm_topk_prob and scaling)
  std::vector<int64_t> expert_count;  // (E)   slots each expert keeps (after capacity)
  std::vector<int64_t> offsets;       // (E+1) row offsets of each expert in the sorted buffer
  std::vector<int32_t> slot_row;      // (N*K) slot -> row in the expert-sorted buffer, -1 if dropped
};

// Per-layer statistics of one forward pass.
struct MoeStats {
  double aux_loss = 0, seq_aux_loss = 0, z_loss = 0;  // already multiplied by their coefficients
  std::vector<int64_t> load;  // (E) tokens that selected e (before capacity drops)
  int64_t dropped = 0;        // slots dropped by capacity
};

// Saved activations of one MoE layer for one micro-batch; buffers grow on first use.
// With expert parallelism the experts see Ml rows (those of this rank's experts, from every
// rank); on one process the local rows are the sorted rows and Ml = M.
struct MoeCache {
  RoutingPlan plan;
  ExpertExchange exchange;       // the dispatcher's routes of this micro-batch
  bool remote = false;           // local_x / local_y hold the experts' rows (expert parallel)
  std::vector<float> logits;     // (N, E) router logits z
  std::vector<float> scores;     // (N, E) s = softmax(z) or sigmoid(z)
  std::vector<float> sorted_x;   // (M, D) tokens copied to their experts' rows, M = kept slots
  std::vector<float> local_x;    // (Ml, D) rows of this rank's experts (expert parallel only)
  std::vector<float> gu;         // (Ml, 2*Fe)
  std::vector<float> h;          // (Ml, Fe)
  std::vector<float> local_y;    // (Ml, D) expert outputs before gate weighting
  std::vector<float> sorted_y;   // (M, D) the same back home (expert parallel only)
  std::vector<float> shared_gu;  // (N, 2*S*Fe)
  std::vector<float> shared_h;   // (N, S*Fe)
  std::vector<int64_t> load;      // (E)    tokens that selected e (before capacity drops)
  std::vector<int64_t> seq_load;  // (B, E) the same per sequence (for seq_aux_loss)
  // The aux loss's counts: load summed over the data-parallel ranks, and its scale (1/ranks).
  std::vector<int64_t> load_total, load_before;  // (E), (E)
  double load_scale = 1.0;
};

// Backward scratch, nothing kept between calls: one is shared by every MoE layer of a model.
// Buffers are reused as backward goes down the layer: drows holds d sorted_y, then d sorted_x;
// dh and dgu hold the routed experts' gradients, then the shared expert's.
struct MoeScratch {
  std::vector<float> drows;          // (M, D)
  std::vector<float> dlocal;         // (Ml, D) expert parallel: the experts' rows of drows
  std::vector<float> dh;             // (M, Fe), then (N, S*Fe)
  std::vector<float> dgu;            // (M, 2*Fe), then (N, 2*S*Fe)
  std::vector<float> dgate, dlogits; // (N, K) (N, E)
};

// x (N, D) is the normalized input, N = B*T tokens in B sequences of T (for seq_aux_loss).
// y (N, D) is overwritten. stats gets the loss terms and the load. The dispatcher moves rows
// to the experts and back (local_dispatcher() on one process).
void moe_forward(float* y, const float* x, const MoeWeights& w, const ModelConfig& cfg, int64_t B,
                 int64_t T, MoeCache& cache, MoeStats& stats,
                 TokenDispatcher& dispatcher = local_dispatcher());

// dy (N, D) -> dx (N, D) overwritten; parameter gradients accumulated into g. The gradients of
// the auxiliary terms (aux, seq_aux, z) are included, each scaled by aux_grad_scale (the same
// factor applied to the cross-entropy gradient, e.g. 1/accumulation_steps).
void moe_backward(float* dx, const float* dy, const float* x, const MoeWeights& w,
                  const MoeGrads& g, const ModelConfig& cfg, int64_t B, int64_t T,
                  const MoeCache& cache, MoeScratch& scratch, float aux_grad_scale,
                  TokenDispatcher& dispatcher = local_dispatcher());

// Auxiliary-loss-free balancing, after an optimizer step: b_e += rate * sign(mean(load) - load_e).
void update_balance_bias(float* bias, const int64_t* load, int64_t E, double rate);

}  // namespace moe
