// INT8 weights for inference: an int8 copy (one scale per output row) of every linear weight
// of a model, beside its fp32 parameters.
//
// Quantized ("*_proj.weight"): the attention q/k/v/o projections, the dense FFN's and the
// shared experts' gate/up/down, every routed expert's gate/up/down.
// Kept in fp32: the embedding, the router (mlp.gate.weight, as DeepSeek-V3 keeps it: the
// top-k choice is sensitive to small logit changes, and it is a tiny [E, D] matrix), the
// balancing bias, the norms and lm_head (the logits' precision sets the loss; it is one matrix).
//
// Use, beside the fp32 call it replaces (`off` is the arena offset the fp32 code reads at):
//   if (const Int8Tensor t = int8.find(o.qkv, Qd))   // the q/k/v rows, stacked
//     cpu::linear_forward_int8(y, x, t.q, t.scale, t.sum, N, D, Qd);
//   else
//     cpu::linear_forward(y, x, P + o.qkv, N, D, Qd);
// and for routed experts (expert e's copy is at t.q + e * t.q_stride, its scales and sums at
// t.scale / t.sum + e * t.s_stride):
//   const Int8Tensor gu = int8.find(o.experts, 2 * Fe);            // gate+up of expert 0
//   const Int8Tensor dn = int8.find(o.experts + 2 * Fe * D, D);    // down of expert 0
//   cpu::grouped_linear_forward_int8(y, x, gu.q, gu.q_stride, gu.scale, gu.sum, gu.s_stride,
//                                    offsets, El, D, 2 * Fe);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/params.h"

namespace moe {

class Model;

// True for the weights Int8Weights quantizes (the "*_proj.weight" ones, see above).
bool is_int8_param(const ParamSpec& spec);

// A view of `out` rows [out, in] of int8 weights (one weight, or adjacent ones stacked).
struct Int8Tensor {
  const int8_t* q = nullptr;     // [out, in]
  const float* scale = nullptr;  // (out) W[o, :] ~= q[o, :] * scale[o]
  const int32_t* sum = nullptr;  // (out) sum of q[o, :] (the kernels' zero-point correction)
  int64_t out = 0, in = 0;
  // Routed experts: the same rows of the next expert are q_stride int8 elements and s_stride
  // scales / sums further (0 for other weights).
  int64_t q_stride = 0, s_stride = 0;
  explicit operator bool() const { return q != nullptr; }
};

class Int8Weights {
 public:
  Int8Weights() = default;
  // Room for every is_int8_param weight of `layout`, all zero (fill with set() or quantize).
  explicit Int8Weights(const ParamLayout& layout);

  // Quantizes every is_int8_param weight of the model (per output row, int8.h).
  static Int8Weights quantize(const Model& model);
  static Int8Weights quantize(const ParamLayout& layout, const float* params);

  // The int8 copy of the `out` rows the fp32 code reads at params + param_offset: one weight,
  // or several adjacent ones with the same `in` stacked (q/k/v, gate/up). Empty (false) if
  // those rows are not all int8 weights.
  Int8Tensor find(int64_t param_offset, int64_t out) const;

  // Stores a weight's int8 copy (q [out, in], scale (out)) as given, e.g. read from an int8
  // checkpoint; the weight must be is_int8_param. Recomputes its row sums.
  void set(const ParamSpec& spec, const int8_t* q, const float* scale);
  // Quantizes one weight from fp32.
  void quantize_one(const ParamSpec& spec, const float* W);

  // For save_checkpoint: the stored copy of `spec`, or {} if it is not int8.
  Int8Data data(const ParamSpec& spec) const;

  // True if these were made for `layout` (same arena size and int8 weights at the same offsets).
  bool matches(const ParamLayout& layout) const;

  int64_t tensors() const { return int64_t(entries_.size()); }
  int64_t bytes() const;  // int8 values + scales + sums
  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    int64_t offset, in, out;     // the fp32 parameter: arena offset, [out, in]
    int64_t q_pos, s_pos;        // where its copy starts in q_ and in scale_ / sum_
    int64_t q_stride, s_stride;  // routed experts: to the next expert's copy (Int8Tensor)
  };
  const Entry* entry_at(int64_t param_offset) const;

  int64_t layout_numel_ = 0;    // total_numel of the layout they were made for
  std::vector<Entry> entries_;  // in layout order, by offset
  std::vector<int8_t> q_;       // every copy, packed in layout order
  std::vector<float> scale_;
  std::vector<int32_t> sum_;
};

// Loads any checkpoint folder (float32, bfloat16 or int8) into cfg and fp32 params, and its
// int8 weights into int8: an int8 folder's stored copies as they are (and any weight it keeps
// in fp32 quantized here); for other folders int8 is left empty unless quantize_fp32.
CheckpointInfo load_quantized(const std::string& dir, ModelConfig* cfg, std::vector<float>* params,
                              Int8Weights* int8, bool quantize_fp32 = false);

// Writes an int8 checkpoint of cfg/params with the copies held by int8.
void save_quantized(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                    const float* params, const Int8Weights& int8);

}  // namespace moe
