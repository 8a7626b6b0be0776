// Weight GEMMs in f32, bf16 or emulated FP8; see gemms.h.
#include "model/gemms.h"

#include "core/error.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/quantize.h"
#include "model/quantized.h"

namespace moe {

namespace {
template <class T>
T* grown(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}
}  // namespace

ComputeDtype parse_compute_dtype(const std::string& text, const std::string& where) {
  if (text == "fp32" || text == "f32" || text == "float32") return ComputeDtype::kF32;
  if (text == "bf16" || text == "bfloat16") return ComputeDtype::kBF16;
  if (text == "fp8" || text == "fp8e4m3") return ComputeDtype::kFP8;
  MOE_FAIL("config", where, " = \"", text,
           "\" is not a compute dtype; use fp32, bf16 (bf16 GEMMs, f32 accumulation and "
           "master weights) or fp8 (DeepSeek-V3's E4M3 tile-scaled GEMMs, emulated)");
}

const char* compute_dtype_name(ComputeDtype d) {
  switch (d) {
    case ComputeDtype::kBF16:
      return "bf16";
    case ComputeDtype::kFP8:
      return "fp8";
    default:
      return "fp32";
  }
}

void Gemms::bind(ComputeDtype dtype, const float* params, int64_t numel) {
  dtype_ = dtype;
  base_ = params;
  numel_ = numel;
  if (low_precision())
    weights_.resize(size_t(numel));
  else
    weights_ = {};
}

void Gemms::cast_weights(const std::vector<WeightMatrix>& mats) {
  if (!low_precision()) return;
  for (const WeightMatrix& m : mats) {
    MOE_CHECK(m.offset >= 0 && m.offset + m.rows * m.cols <= numel_, "gemms", "weight matrix [",
              m.rows, ", ", m.cols, "] at ", m.offset, " lies outside the bound arena of ", numel_,
              " floats");
    cpu::bf16* out = weights_.data() + m.offset;
    if (m.head) head_ = m.offset;
    if (dtype_ == ComputeDtype::kFP8 && !m.head)
      cpu::fp8_quantize_blocks(out, base_ + m.offset, m.rows, m.cols);
    else
      cpu::cast_bf16(out, base_ + m.offset, m.rows * m.cols);
  }
}

const cpu::bf16* Gemms::low(const float* W) const {
  const int64_t off = W - base_;
  MOE_CHECK(base_ && off >= 0 && off < numel_, "gemms",
            "a weight outside the parameter arena this model bound; low-precision GEMMs only "
            "take the model's own weights");
  return weights_.data() + off;
}

void Gemms::check_no_int8() const {
  MOE_CHECK(!int8_, "gemms",
            "backward with INT8 weights: INT8 is for inference (moe eval, moe generate); train "
            "with [train] dtype = fp32, bf16 or fp8");
}

bool Gemms::fp8(const float* W) const { return dtype_ == ComputeDtype::kFP8 && W - base_ != head_; }

const cpu::bf16* Gemms::by_rows(std::vector<cpu::bf16>& buf, const float* x, int64_t rows,
                                int64_t cols, bool fp8) {
  cpu::bf16* out = grown(buf, rows * cols);
  if (fp8)
    cpu::fp8_quantize_rows(out, x, rows, cols);
  else
    cpu::cast_bf16(out, x, rows * cols);
  return out;
}

const cpu::bf16* Gemms::by_cols(std::vector<cpu::bf16>& buf, const float* x, int64_t rows,
                                int64_t cols, const int64_t* offsets, int64_t groups) {
  cpu::bf16* out = grown(buf, rows * cols);
  cpu::fp8_quantize_cols(out, x, rows, cols, offsets, groups);
  return out;
}

void Gemms::attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                              int64_t H, int64_t Hkv, int64_t Dh) const {
  if (low_precision())
    cpu::attention_forward_bf16(out, att, qkv, B, T, H, Hkv, Dh);
  else
    cpu::attention_forward(out, att, qkv, B, T, H, Hkv, Dh);
}

void Gemms::attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                               float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                               int64_t Dh) const {
  if (low_precision())
    cpu::attention_backward_bf16(dqkv, dout, qkv, att, scratch, B, T, H, Hkv, Dh);
  else
    cpu::attention_backward(dqkv, dout, qkv, att, scratch, B, T, H, Hkv, Dh);
}

void Gemms::forward(float* y, const float* x, const float* W, int64_t N, int64_t in, int64_t out) {
  if (int8_) {
    if (const Int8Tensor t = int8_->find(W - base_, out))
      return cpu::linear_forward_int8(y, x, t.q, t.scale, t.sum, N, in, out);
  }
  if (!low_precision()) return cpu::linear_forward(y, x, W, N, in, out);
  cpu::linear_forward(y, by_rows(xa_, x, N, in, fp8(W)), low(W), N, in, out);
}

void Gemms::backward(float* dx, float* dW, const float* dy, const float* x, const float* W,
                     int64_t N, int64_t in, int64_t out, bool accumulate) {
  check_no_int8();
  if (!low_precision()) {
    cpu::linear_backward_w(dW, dy, x, N, in, out);
    cpu::linear_backward_x(dx, dy, W, N, in, out, accumulate);
    return;
  }
  const bool q = fp8(W);
  const cpu::bf16* dy_rows = by_rows(dya_, dy, N, out, q);
  if (q) {
    cpu::linear_backward_w(dW, by_cols(dyb_, dy, N, out, nullptr, 1),
                           by_cols(xb_, x, N, in, nullptr, 1), N, in, out);
  } else {  // bf16: the row cast of dy serves both products
    cpu::linear_backward_w(dW, dy_rows, by_rows(xa_, x, N, in, false), N, in, out);
  }
  cpu::linear_backward_x(dx, dy_rows, low(W), N, in, out, accumulate);
}

void Gemms::grouped_forward(float* y, const float* x, const float* W, int64_t w_stride,
                            const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  if (int8_) {
    if (const Int8Tensor t = int8_->find(W - base_, out)) {
      MOE_CHECK(E <= 1 || t.q_stride > 0, "gemms", "the int8 copy of the grouped weight at ",
                W - base_, " has no per-expert stride");
      return cpu::grouped_linear_forward_int8(y, x, t.q, t.q_stride, t.scale, t.sum, t.s_stride,
                                              offsets, E, in, out);
    }
  }
  if (!low_precision()) return cpu::grouped_linear_forward(y, x, W, w_stride, offsets, E, in, out);
  const int64_t M = E > 0 ? offsets[E] : 0;
  cpu::grouped_linear_forward(y, by_rows(xa_, x, M, in, fp8(W)), low(W), w_stride, offsets, E, in,
                              out);
}

void Gemms::grouped_backward(float* dx, float* dW, const float* dy, const float* x, const float* W,
                             int64_t w_stride, const int64_t* offsets, int64_t E, int64_t in,
                             int64_t out) {
  check_no_int8();
  if (!low_precision()) {
    cpu::grouped_linear_backward_w(dW, w_stride, dy, x, offsets, E, in, out);
    cpu::grouped_linear_backward_x(dx, dy, W, w_stride, offsets, E, in, out);
    return;
  }
  const int64_t M = E > 0 ? offsets[E] : 0;
  const bool q = fp8(W);
  const cpu::bf16* dy_rows = by_rows(dya_, dy, M, out, q);
  if (q) {
    cpu::grouped_linear_backward_w(dW, w_stride, by_cols(dyb_, dy, M, out, offsets, E),
                                   by_cols(xb_, x, M, in, offsets, E), offsets, E, in, out);
  } else {
    cpu::grouped_linear_backward_w(dW, w_stride, dy_rows, by_rows(xa_, x, M, in, false), offsets, E,
                                   in, out);
  }
  cpu::grouped_linear_backward_x(dx, dy_rows, low(W), w_stride, offsets, E, in, out);
}

}  // namespace moe
