// The MoE transformer of DESIGN.md section 3: parameters, gradients and activations in flat
// arenas; forward and backward written by hand as straight lists of kernel calls (model.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/gemms.h"
#include "model/moe_layer.h"
#include "model/params.h"

namespace moe {

// Loss terms of one forward pass (means over the micro-batch's B*T tokens).
struct LossStats {
  double loss = 0;      // ce + aux + seq_aux + z  (what the gradient is of)
  double ce = 0;        // mean next-token cross-entropy, nats
  double aux = 0, seq_aux = 0, z = 0;  // summed over MoE layers, coefficients applied
  int64_t tokens = 0;
  int64_t dropped = 0;  // routed slots dropped by capacity, all layers
};

// Routing statistics of one MoE layer over the last forward pass (read-only, for metrics; they
// never feed back into the numerics).
struct MoeLayerStats {
  int64_t layer = 0;            // index in [first_k_dense_replace, L)
  std::vector<int64_t> load;    // (E) tokens that selected e (before capacity drops)
  int64_t tokens = 0;           // N = B*T
  int64_t slots = 0;            // N*K routed slots
  int64_t dropped = 0;          // slots dropped by capacity (0 when dropless)
  double entropy_sum = 0;       // sum over tokens of H(s / sum_j s_j), nats
  // Mean over tokens of the entropy of the normalized router scores (ln E = uniform routing).
  double router_entropy() const { return tokens > 0 ? entropy_sum / double(tokens) : 0.0; }
  double dropped_frac() const { return slots > 0 ? double(dropped) / double(slots) : 0.0; }
};

struct Activations;  // model.cpp

class Model {
 public:
  // Validates cfg, builds the layout (all of it, or one expert-parallel rank's part), zero arenas.
  explicit Model(const ModelConfig& cfg, const LayoutOptions& parts = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // normal(0, initializer_range); o_proj/down_proj scaled by 1/sqrt(2L); norms 1; bias 0.
  // Element j of parameter p is a pure function of (seed, p's name, j).
  void init_weights(uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  std::vector<float>& params() { return params_; }  // [total_numel]
  std::vector<float>& grads() { return grads_; }    // [total_numel]
  const std::vector<float>& params() const { return params_; }
  const std::vector<float>& grads() const { return grads_; }
  void zero_grads();

  // tokens (B, T+1): inputs tokens[:, :T], targets tokens[:, 1:]. T <= max_position_embeddings.
  // Forward, then (if backward) gradients accumulated into grads() with the loss scaled by
  // grad_scale (e.g. 1/accumulation_steps). Routing loads are added to load().
  LossStats forward_backward(const int32_t* tokens, int64_t B, int64_t T, float grad_scale = 1.0f);
  // Forward only; logits() then holds (B*T, V).
  LossStats forward(const int32_t* tokens, int64_t B, int64_t T);
  const float* logits() const;
  // Cross-entropy of each of the B*T tokens of the last forward (N), nats.
  const float* token_losses() const;

  // Tokens that selected each expert, per layer (empty for dense layers), summed over the
  // forward passes since reset_load(): the input of the auxiliary-loss-free bias update.
  const std::vector<std::vector<int64_t>>& load() const { return load_; }
  std::vector<std::vector<int64_t>>& load() { return load_; }  // summed over ranks before update
  void reset_load();
  // b_e += bias_update_rate * sign(mean(load) - load_e) on every MoE layer, then reset_load().
  void update_balance_biases();

  // One entry per MoE layer, from the last forward pass (forward or forward_backward); empty
  // before the first one. Costs one pass over the (N, E) router scores per layer.
  const std::vector<MoeLayerStats>& moe_stats() const { return moe_stats_; }
  // The experts each token of the last forward chose in MoE layer `layer` (global ids, kept
  // or dropped): (N, K) in the first N*K entries; empty for a dense layer or before a forward.
  const std::vector<int32_t>& routed_experts(int64_t layer) const;

  // How MoE layers reach the experts (null: all on this process). Must hold the experts of
  // layout(): expert_first() and experts_local() agree with it.
  void set_dispatcher(TokenDispatcher* d);
  // Called during backward when a part's gradients are final for this pass: layer L (the head:
  // final norm and lm_head), then each layer l from L-1 down to 0, then -1 (the embedding).
  // Data parallelism starts reducing a bucket as soon as its layers are done.
  void set_grad_ready_hook(std::function<void(int64_t)> hook) { grad_ready_ = std::move(hook); }
  // Called during forward before a part's parameters are read: -1 (the embedding), each layer
  // l from 0 up, then L (the head). Data parallelism waits there for the all-gather of the
  // parameters it updated, which runs meanwhile.
  void set_params_needed_hook(std::function<void(int64_t)> hook) {
    params_needed_ = std::move(hook);
  }

  // The precision of the weight GEMMs (model/gemms.h: f32, bf16 or emulated FP8); parameters,
  // gradients and optimizer state stay f32. Default f32.
  void set_compute_dtype(ComputeDtype d) { compute_dtype_ = d; }
  ComputeDtype compute_dtype() const { return compute_dtype_; }
  // Inference in INT8: forward() runs the linear weights `int8` holds (model/quantized.h, made
  // for this model's layout) as INT8 GEMMs; forward_backward() then refuses. Null: off.
  void set_int8(const Int8Weights* int8);

  // Views for one layer (used by the MoE layer, inference and tests); `gemms` runs its GEMMs
  // (null: f32 kernels).
  MoeWeights moe_weights(int64_t layer, Gemms* gemms = nullptr) const;
  MoeGrads moe_grads(int64_t layer);

 private:
  LossStats run(const int32_t* tokens, int64_t B, int64_t T, bool backward, float grad_scale);

  ModelConfig cfg_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  std::vector<std::vector<int64_t>> load_;
  std::vector<MoeLayerStats> moe_stats_;  // (MoE layers) of the last forward pass
  std::vector<float> rope_cos_, rope_sin_;  // (max_pos, Dh/2)
  std::unique_ptr<Activations> acts_;
  ComputeDtype compute_dtype_ = ComputeDtype::kF32;
  Gemms gemms_;
  std::vector<std::vector<WeightMatrix>> part_weights_;  // (L+2) see weight_matrices()
  TokenDispatcher* dispatcher_ = nullptr;
  std::function<void(int64_t)> grad_ready_, params_needed_;
};

}  // namespace moe
