// Pure compute kernels on the CPU. Conventions (DESIGN.md section 6):
//  - output first, then inputs, then sizes; all tensors are dense row-major fp32 unless noted;
//  - kernels never allocate, communicate or log; scratch is passed in;
//  - parameter gradients (dw, dtable, ...) are ACCUMULATED (+=); activation gradients are
//    overwritten unless the comment says "+=";
//  - every kernel has a scalar *_ref twin (ref.h) with the same signature, templated on the
//    element type so finite-difference gradient checks run in double;
//  - threads via OpenMP; results do not depend on timing (fixed reduction order per thread
//    count).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moe::cpu {

// bfloat16 values as their bits (core/dtype.h f32_to_bf16 / bf16_to_f32; quantize.h for arrays).
using bf16 = uint16_t;

// ---- GEMM (oneDNN matmul primitive, cached per shape) ------------------------------------
// C[M,N] = alpha * op(A) @ op(B) + beta * C, beta in {0, 1}.
// op(A) is [M,K]: A is stored [M,K] (lda = K) or, if trans_a, [K,M] (lda = M).
// op(B) is [K,N]: B is stored [K,N] (ldb = N) or, if trans_b, [N,K] (ldb = K).
// M may be 0 (no-op, except beta = 0 with M > 0 clears C).
void gemm(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool trans_a,
          bool trans_b, float alpha = 1.0f, float beta = 0.0f);

// Linear layer helpers over HF-layout weights W [out, in]:
//   linear_forward:      y (N,out)  = x (N,in) @ W^T
//   linear_backward_x:   dx (N,in)  = dy (N,out) @ W          (+= if accumulate)
//   linear_backward_w:   dW [out,in] += dy^T @ x
void linear_forward(float* y, const float* x, const float* W, int64_t N, int64_t in, int64_t out);
void linear_backward_x(float* dx, const float* dy, const float* W, int64_t N, int64_t in,
                       int64_t out, bool accumulate);
void linear_backward_w(float* dW, const float* dy, const float* x, int64_t N, int64_t in,
                       int64_t out);

// ---- Grouped expert GEMM ----------------------------------------------------------------
// Rows of x are grouped by expert: group e is rows [offsets[e], offsets[e+1]) (offsets has
// E+1 entries, offsets[0] = 0). Expert e's weight is W + e * w_stride, shaped [out, in].
//   grouped_linear_forward:    y_g = x_g @ W_e^T
//   grouped_linear_backward_x: dx_g = dy_g @ W_e
//   grouped_linear_backward_w: dW_e += dy_g^T @ x_g
void grouped_linear_forward(float* y, const float* x, const float* W, int64_t w_stride,
                            const int64_t* offsets, int64_t E, int64_t in, int64_t out);
void grouped_linear_backward_x(float* dx, const float* dy, const float* W, int64_t w_stride,
                               const int64_t* offsets, int64_t E, int64_t in, int64_t out);
void grouped_linear_backward_w(float* dW, int64_t w_stride, const float* dy, const float* x,
                               const int64_t* offsets, int64_t E, int64_t in, int64_t out);

// The same GEMM, linear and grouped kernels with bf16 inputs: products of bf16 values summed in
// f32, f32 output (and f32 gradients accumulated, dW +=). Sizes, layouts and threading as above.
// Without AVX-512 BF16 (quantize.h bf16_native()) they widen to f32: same numerics, slower.
void gemm(float* C, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K, bool trans_a,
          bool trans_b, float alpha = 1.0f, float beta = 0.0f);
void linear_forward(float* y, const bf16* x, const bf16* W, int64_t N, int64_t in, int64_t out);
void linear_backward_x(float* dx, const bf16* dy, const bf16* W, int64_t N, int64_t in,
                       int64_t out, bool accumulate);
void linear_backward_w(float* dW, const bf16* dy, const bf16* x, int64_t N, int64_t in,
                       int64_t out);
void grouped_linear_forward(float* y, const bf16* x, const bf16* W, int64_t w_stride,
                            const int64_t* offsets, int64_t E, int64_t in, int64_t out);
void grouped_linear_backward_x(float* dx, const bf16* dy, const bf16* W, int64_t w_stride,
                               const int64_t* offsets, int64_t E, int64_t in, int64_t out);
void grouped_linear_backward_w(float* dW, int64_t w_stride, const bf16* dy, const bf16* x,
                               const int64_t* offsets, int64_t E, int64_t in, int64_t out);

// ---- RMSNorm ----------------------------------------------------------------------------
// y = x / sqrt(mean(x^2) + eps) * w ; rstd (N) saved for backward.
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t D,
                     float eps);
// dx (N,D) += ; dw (D) += . Deterministic: dw reduced in a fixed order.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t D);

// ---- SwiGLU -----------------------------------------------------------------------------
// gu (N, 2F): columns [0,F) are gate, [F,2F) are up (gate_proj and up_proj stacked, one GEMM).
// h (N, F) = silu(gate) * up.
void swiglu_forward(float* h, const float* gu, int64_t N, int64_t F);
// dgu (N, 2F) = d/dgu of h given dh (N, F).
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t N, int64_t F);

// ---- Embedding --------------------------------------------------------------------------
void embedding_forward(float* x, const int32_t* tokens, const float* table, int64_t N, int64_t D);
// dtable (V,D) += ; deterministic (no atomics).
void embedding_backward(float* dtable, const float* dx, const int32_t* tokens, int64_t N,
                        int64_t D);

// ---- RoPE (HF rotate_half convention) ---------------------------------------------------
// Tables: cos/sin (max_pos, Dh/2), angle = pos * theta^(-2i/Dh).
void rope_tables(float* cos, float* sin, int64_t max_pos, int64_t Dh, double theta);
// In place on `nheads` heads of Dh values at the start of each row; rows are (B,T) with
// `row_stride` floats between consecutive tokens. Token t of every sequence has position
// pos0 + t. With x = [x1, x2] (halves): out1 = x1*c - x2*s, out2 = x2*c + x1*s.
// inverse = true applies the transpose rotation (used in backward).
void rope_apply(float* x, const float* cos, const float* sin, int64_t B, int64_t T,
                int64_t nheads, int64_t Dh, int64_t row_stride, int64_t pos0, bool inverse);

// ---- Causal GQA attention ---------------------------------------------------------------
// qkv (B, T, (H + 2*Hkv) * Dh): per token [q heads | k heads | v heads], RoPE already applied
// to q and k. Query head h uses kv head h / (H / Hkv). Scale 1/sqrt(Dh).
// out (B, T, H*Dh); att (B, H, T, T) holds the softmax probabilities (upper triangle = 0),
// saved for backward.
void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t Dh);
// Scratch floats attention_backward needs for `nthreads` threads.
size_t attention_backward_scratch(int64_t T, int64_t Dh, int nthreads);
// dqkv (B, T, (H+2Hkv)*Dh) overwritten (gradient w.r.t. post-RoPE q, k and v).
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh);
// The same with bf16 products, for the bf16 and FP8 compute dtypes (model/gemms.h): the
// operands of Q K^T, P V, dO V^T, dS K, dS^T Q and P^T dO are rounded to bf16 and their products
// summed in f32 (bf16_pairs.h); scores, softmax, its backward, the saved probabilities and all
// outputs stay f32. Same scratch.
void attention_forward_bf16(float* out, float* att, const float* qkv, int64_t B, int64_t T,
                            int64_t H, int64_t Hkv, int64_t Dh);
void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* att,
                             float* scratch, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                             int64_t Dh);

// ---- Fused softmax cross-entropy --------------------------------------------------------
// For each row n: loss_n = logsumexp(logits_n) - logits_n[target_n];
// dlogits_n = (softmax(logits_n) - onehot(target_n)) * dscale. dlogits may alias logits.
// Returns the sum of loss_n, accumulated in double in row order.
double cross_entropy_forward_backward(float* dlogits, float* losses, const float* logits,
                                      const int32_t* targets, int64_t N, int64_t V, float dscale);
// Forward only (eval): returns the sum of loss_n in double.
double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                             int64_t N, int64_t V);

// ---- AdamW (decoupled, PyTorch semantics) -----------------------------------------------
// p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = step (1-based).
void adamw_step(float* p, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);

}  // namespace moe::cpu
