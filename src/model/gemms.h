// The model's weight GEMMs in its compute dtype (DESIGN.md section 3): every linear layer of
// attention, the dense FFN, the experts, the shared experts and the head goes through one
// Gemms object, which runs it in f32, bf16 or emulated FP8 while master weights, gradients and
// optimizer moments stay f32.
//
//   f32:  as the kernels in kernels.h.
//   bf16: weights cast to bf16 once per forward pass (cast_weights, as each part's parameters
//         are needed); activations and output gradients cast where they enter a GEMM; products
//         summed in f32; f32 outputs and f32 weight gradients.
//   fp8:  DeepSeek-V3's recipe, emulated on the bf16 GEMMs (kernels/cpu/quantize.h): weights in
//         128 x 128 blocks; forward inputs and backward_x output gradients in 1 x 128 tiles along
//         the reduced dimension; both inputs of backward_w in 128 x 1 tiles along the tokens.
//         The head (lm_head) runs in bf16, as DeepSeek-V3 keeps the output head.
// The attention core's six products (Q K^T, P V and the four of backward) run on bf16 operands
// in both bf16 and fp8 modes, as DeepSeek-V3 keeps attention in bf16 (kernels.h
// attention_*_bf16); its scores, softmax and saved probabilities stay f32.
// What never leaves f32 in any mode: the embedding, norms, RoPE, the softmax of attention, the
// router (logits, scores, top-k), SwiGLU, the losses, the residual stream, gradient reduction
// and AdamW.
//
// The weights are looked up by address: a Gemms knows the parameter arena it was bound to and
// keeps a same-layout arena of low-precision copies, so the model passes `P + offset` as it
// would to the f32 kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace moe {

class Int8Weights;  // model/quantized.h

enum class ComputeDtype { kF32, kBF16, kFP8 };

// "fp32" | "bf16" | "fp8"; throws naming the text and the allowed values.
ComputeDtype parse_compute_dtype(const std::string& text, const std::string& where = "dtype");
const char* compute_dtype_name(ComputeDtype d);

// One weight matrix of the arena: [rows, cols] at `offset` floats.
struct WeightMatrix {
  int64_t offset, rows, cols;
  bool head = false;  // lm_head: bf16 even in fp8 mode
};

class Gemms {
 public:
  Gemms() = default;
  ComputeDtype dtype() const { return dtype_; }
  bool low_precision() const { return dtype_ != ComputeDtype::kF32; }
  // params: the f32 arena of `numel` floats that weight pointers point into.
  void bind(ComputeDtype dtype, const float* params, int64_t numel);
  // Casts these matrices of the bound arena (no-op in f32).
  void cast_weights(const std::vector<WeightMatrix>& mats);
  // Inference: forward() and grouped_forward() run the weights `int8` holds as u8s8 INT8 GEMMs
  // (kernels/cpu/int8.h; activations quantized per token) and the rest as before. Backward
  // refuses to run while it is set. Null turns it off. `int8` must outlive its use.
  void set_int8(const Int8Weights* int8) { int8_ = int8; }

  // y (N,out) = x (N,in) @ W^T, W [out,in] in the bound arena.
  void forward(float* y, const float* x, const float* W, int64_t N, int64_t in, int64_t out);
  // dW [out,in] += dy^T @ x; dx (N,in) = dy @ W (+= if accumulate).
  void backward(float* dx, float* dW, const float* dy, const float* x, const float* W, int64_t N,
                int64_t in, int64_t out, bool accumulate);
  // The grouped expert GEMMs of kernels.h: rows grouped by offsets (E+1), expert e's weight at
  // W + e * w_stride (its gradient at dW + e * w_stride).
  void grouped_forward(float* y, const float* x, const float* W, int64_t w_stride,
                       const int64_t* offsets, int64_t E, int64_t in, int64_t out);
  void grouped_backward(float* dx, float* dW, const float* dy, const float* x, const float* W,
                        int64_t w_stride, const int64_t* offsets, int64_t E, int64_t in,
                        int64_t out);
  // The attention core of kernels.h in this dtype: f32 products, or bf16 ones in bf16 and fp8.
  void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t H,
                         int64_t Hkv, int64_t Dh) const;
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                          float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                          int64_t Dh) const;

 private:
  const cpu::bf16* low(const float* W) const;  // the low-precision copy of W
  bool fp8(const float* W) const;              // W's GEMMs quantize to FP8 (all but the head)
  void check_no_int8() const;                  // backward refuses INT8 weights
  // x (rows, cols) as a GEMM operand reduced over cols (forward, backward_x: bf16, or FP8 in
  // 1 x 128 tiles) or over rows (backward_w in FP8: 128 x 1 tiles restarting at the groups'
  // offsets).
  const cpu::bf16* by_rows(std::vector<cpu::bf16>& buf, const float* x, int64_t rows, int64_t cols,
                           bool fp8);
  const cpu::bf16* by_cols(std::vector<cpu::bf16>& buf, const float* x, int64_t rows, int64_t cols,
                           const int64_t* offsets, int64_t groups);

  ComputeDtype dtype_ = ComputeDtype::kF32;
  const Int8Weights* int8_ = nullptr;
  const float* base_ = nullptr;
  int64_t numel_ = 0;
  int64_t head_ = -1;               // offset of lm_head (set by cast_weights)
  std::vector<cpu::bf16> weights_;  // [numel] same layout as the f32 arena; linear weights only
  std::vector<cpu::bf16> xa_, dya_, xb_, dyb_;  // operand scratch, grown on use
};

}  // namespace moe
