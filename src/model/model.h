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
  // Multi-token prediction (num_nextn_predict_layers = M > 0; DeepSeek-V3 sec. 2.2):
  double mtp = 0;                // mtp_loss_weight / M * sum_k mtp_ce[k] (part of loss)
  std::vector<double> mtp_ce;    // (M) module k's mean cross-entropy over B*(T-k-1) positions
  // Module 0 predicts token i+2 at position i (B*(T-1) positions): how often its argmax is the
  // true token t_{i+2} (mtp_hits) and how often it is the main model's own argmax at i+1
  // (mtp_agree: a greedy draft the main model would accept, given the true t_{i+1}).
  int64_t mtp_positions = 0, mtp_hits = 0, mtp_agree = 0;
};

// Routing statistics of one MoE layer over the last forward pass (read-only, for metrics; they
// never feed back into the numerics).
struct MoeLayerStats {
  int64_t layer = 0;            // in [first_k_dense_replace, L + M): L + k is MTP module k's
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
  // MTP module k's logits of the last forward(): (B*(T-1-k), V), positions in sequence order.
  const float* mtp_logits(int64_t k) const;
  // Cross-entropy of each of the B*T tokens of the last forward (N), nats.
  const float* token_losses() const;

  // Tokens that selected each expert, per layer (L main layers, then the M MTP blocks; empty
  // for dense layers), summed over the forward passes since reset_load(): the input of the
  // auxiliary-loss-free bias update.
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
  // Parts of the model, for the two hooks below: -1 the embedding, l in [0, L) a layer, L the
  // head (final norm and lm_head), L + 1 + k MTP module k (parameters of layer index L + k).
  // Called during backward when a part's gradients are final for this pass: MTP modules
  // L + M ... L + 1 (last first), L (the head: its lm_head gradient includes the MTP modules'),
  // then each layer l from L-1 down to 0, then -1 (the embedding).
  // Data parallelism starts reducing a bucket as soon as its layers are done.
  void set_grad_ready_hook(std::function<void(int64_t)> hook) { grad_ready_ = std::move(hook); }
  // Called during forward before a part's parameters are read: -1 (the embedding), each layer
  // l from 0 up, then L (the head), then the MTP modules L + 1 ... L + M. Data parallelism
  // waits there for the all-gather of the parameters it updated, which runs meanwhile.
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
  // One transformer block at layer index l (main layer or MTP block) over B sequences of T:
  // xm = x + attention(norm(x)), xo = xm + ffn(norm(xm)); MoE terms and load into st.
  void block_forward(int64_t l, const float* x, float* xm, float* xo, int64_t B, int64_t T,
                     LossStats& st, TokenDispatcher& disp);
  // dres (N, D): d xo in, d x out; parameter gradients accumulated.
  void block_backward(int64_t l, float* dres, const float* x, const float* xm, int64_t B,
                      int64_t T, float grad_scale, TokenDispatcher& disp);
  // out (N, D) = o_proj(attention(la.ln1)) of block l, GQA or MLA (model_attention.cpp).
  void attention_forward(int64_t l, float* out, int64_t B, int64_t T);
  // dln (N, D) overwritten with d la.ln1, from dout (N, D) = d out.
  void attention_backward(int64_t l, float* dln, const float* dout, int64_t B, int64_t T);
  // MTP module k (model_mtp.cpp): forward from the previous depth's h; with `backward`, its
  // cross-entropy gradient (scaled by grad_scale * mtp_loss_weight / M) replaces its logits.
  void mtp_forward(int64_t k, const int32_t* tokens, int64_t B, int64_t T, bool backward,
                   float grad_scale, LossStats& st, TokenDispatcher& disp);
  // Backward of module k; a.dh_carry holds d h_{k+1} from module k+1 (k < M-1) and on return
  // d h_k (B, T-k-1 rows of D): the gradient for the previous depth's first T-k-1 positions.
  void mtp_backward(int64_t k, int64_t B, int64_t T, float grad_scale, TokenDispatcher& disp);

  ModelConfig cfg_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  std::vector<std::vector<int64_t>> load_;
  std::vector<MoeLayerStats> moe_stats_;  // (MoE layers) of the last forward pass
  std::vector<float> rope_cos_, rope_sin_;  // (max_pos, Dh/2); MLA: Dh = qk_rope_head_dim
  std::unique_ptr<Activations> acts_;
  ComputeDtype compute_dtype_ = ComputeDtype::kF32;
  Gemms gemms_;
  std::vector<std::vector<WeightMatrix>> part_weights_;  // (L+M+2) see weight_matrices()
  TokenDispatcher* dispatcher_ = nullptr;
  std::function<void(int64_t)> grad_ready_, params_needed_;
};

}  // namespace moe
