// MoE routing kernels on the CPU (DESIGN.md section 3): router scores, top-k and gate weights,
// the dispatch plan (capacity and expert-sorted rows), auxiliary balance terms and z-loss, and
// the permute / weighted unpermute pair that moves token rows to and from the sorted buffer.
// Conventions as kernels.h: output first, then inputs, then sizes; no allocation; OpenMP with a
// fixed reduction order (no atomic float adds), so results are bitwise reproducible. Each kernel
// has a scalar *_ref twin in moe_ref.h, templated on the element type.
#pragma once

#include <cstdint>

namespace moe::cpu {

enum class ScoringFunc { kSoftmax, kSigmoid };

// The router's fixed settings (from ModelConfig).
struct RouterSpec {
  int64_t E = 8;                        // routed experts
  int64_t K = 2;                        // experts per token, K <= E
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;          // divide the K gates by the sum of their scores
  double routed_scaling_factor = 1.0;   // e.g. 2.5
  // Group-limited routing (DeepSeek-V3): experts [g*E/G, (g+1)*E/G) form group g of G =
  // n_group; a token picks its K experts only inside its best topk_group groups.
  // Needs G | E, 1 <= topk_group <= G and K <= topk_group * E/G; n_group = 1: no limit.
  int64_t n_group = 1;                  // G, e.g. 8
  int64_t topk_group = 1;               // e.g. 4
};

// Coefficients of the auxiliary terms. In backward they already include the gradient scale.
struct RouterLossCoefs {
  double aux_alpha = 0;      // batch-level balance loss, e.g. 0.01
  double seq_aux_alpha = 0;  // sequence-level balance loss, e.g. 1e-4
  double z_loss_coef = 0;    // router z-loss, e.g. 1e-3
  // f_e uses load_e * load_scale: 1/W when load is summed over W data-parallel ranks that each
  // hold N tokens, so that the mean over ranks of aux equals aux over all W*N tokens.
  double load_scale = 1.0;
};

struct RouterLosses {  // coefficients applied
  double aux = 0, seq_aux = 0, z = 0;
};

// ---- Route -------------------------------------------------------------------------------
// scores (N, E) = softmax(z) or sigmoid(z) of logits z (N, E).
// topk_idx (N, K): the K largest s + b per token, by descending s + b (computed in fp32), ties
// to the lower expert index. bias (E) may be null (zeros). topk_w (N, K): g_k = s[e_k],
// divided by sum_k s[e_k] if norm_topk_prob, times routed_scaling_factor.
// With n_group > 1 (and topk_group < n_group) the K are taken only from the token's best
// topk_group groups; the experts of the other groups are excluded (never selected). A group's
// score is the sum of its two largest s + b (fp32, the larger first; its only one if E/G = 1;
// NaN counts as -inf); groups rank by descending score, ties to the lower group index.
void router_forward(float* scores, int32_t* topk_idx, float* topk_w, const float* logits,
                    const float* bias, int64_t N, const RouterSpec& spec);

// seq_load (B, E) = tokens of sequence b (tokens [b*T, (b+1)*T)) that selected expert e;
// load (E) = the same over all B sequences.
void router_counts(int64_t* load, int64_t* seq_load, const int32_t* topk_idx, int64_t B,
                   int64_t T, int64_t E, int64_t K);

// Dispatch plan. Expert e keeps its first `capacity` slots in token order (capacity <= 0:
// dropless). expert_count (E) kept slots, offsets (E+1) their prefix sums, slot_row (N*K) the
// row of slot (n, k) in the expert-sorted buffer (expert 0 first, token order inside an
// expert), -1 if dropped. Returns the number of dropped slots. taken (E, may be null): slots of
// expert e that come before these tokens (on the data-parallel ranks before this one) and
// count against the capacity first.
int64_t route_plan(int32_t* slot_row, int64_t* expert_count, int64_t* offsets,
                   const int32_t* topk_idx, int64_t N, int64_t E, int64_t K, int64_t capacity,
                   const int64_t* taken = nullptr);

// capacity = ceil(c * N * K / E) evaluated in double left to right (as Python's math.ceil of
// c*N*K/E does); 0 (dropless) when c <= 0.
int64_t expert_capacity(double capacity_factor, int64_t N, int64_t K, int64_t E);

// Loss values over N = B*T tokens (accumulated in double, token order). With p = s / sum_j s,
// f_e = E/(K*N) * load_e and P_e = mean_n p_{n,e}: aux = alpha * sum_e f_e P_e; seq_aux =
// seq_alpha * mean over b of the same with sequence b's T tokens; z = coef * mean_n lse(z_n)^2.
// A term whose coefficient is 0 is 0 and costs nothing. load, seq_load: router_counts.
RouterLosses router_losses(const float* logits, const float* scores, const int64_t* load,
                           const int64_t* seq_load, int64_t B, int64_t T,
                           const RouterSpec& spec, const RouterLossCoefs& coefs);

// dz (N, E) overwritten: the gradient w.r.t. the logits of
//   sum_{n,k} dgate[n,k] * topk_w[n,k]  +  aux + seq_aux + z (with coefs, already scaled).
// Selection (top-k, f_e) is not differentiated. dgate (N, K) is 0 for dropped slots; their
// scores still get a gradient through the norm_topk_prob denominator.
void router_backward(float* dz, const float* dgate, const float* logits, const float* scores,
                     const int32_t* topk_idx, const float* topk_w, const int64_t* load,
                     const int64_t* seq_load, int64_t B, int64_t T, const RouterSpec& spec,
                     const RouterLossCoefs& coefs);

// ---- Dispatch / combine ------------------------------------------------------------------
// sorted_x (M, D): row slot_row[n*K+k] = x_n for every kept slot.
void permute(float* sorted_x, const float* x, const int32_t* slot_row, int64_t N, int64_t K,
             int64_t D);
// dx (N, D) overwritten: dx_n = sum over kept slots of dsorted_x[slot_row[n*K+k]].
void permute_backward(float* dx, const float* dsorted_x, const int32_t* slot_row, int64_t N,
                      int64_t K, int64_t D);

// y (N, D) +=  sum over kept slots k of topk_w[n,k] * sorted_y[slot_row[n*K+k]].
void unpermute_weighted(float* y, const float* sorted_y, const float* topk_w,
                        const int32_t* slot_row, int64_t N, int64_t K, int64_t D);
// dsorted_y (M, D) overwritten: row of slot (n,k) = topk_w[n,k] * dy_n.
// dgate (N, K) overwritten: dot(dy_n, sorted_y[row]), 0 for dropped slots.
void unpermute_weighted_backward(float* dsorted_y, float* dgate, const float* dy,
                                 const float* sorted_y, const float* topk_w,
                                 const int32_t* slot_row, int64_t N, int64_t K, int64_t D);

}  // namespace moe::cpu
