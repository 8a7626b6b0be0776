// Scalar reference twins of kernels.h: same argument order, a _ref suffix, templated on the
// element type T (float for fast-vs-ref tests, double for finite-difference gradient checks).
// Written for clarity: one element at a time, no threads, textbook formulas. The fast kernels
// are tested against these, and these are tested against finite differences.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"

namespace moe::cpu {

// ---- GEMM -------------------------------------------------------------------------------
// C[M,N] = alpha * op(A) @ op(B) + beta * C (layouts as gemm in kernels.h).
template <class T>
void gemm_ref(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool trans_a,
              bool trans_b, T alpha = T(1), T beta = T(0)) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;  // double accumulation: the reference should be the accurate side
      for (int64_t k = 0; k < K; ++k) {
        const T a = trans_a ? A[k * M + i] : A[i * K + k];
        const T b = trans_b ? B[j * K + k] : B[k * N + j];
        acc += double(a) * double(b);
      }
      const T prev = beta == T(0) ? T(0) : beta * C[i * N + j];  // beta = 0 ignores NaNs in C
      C[i * N + j] = T(alpha * acc) + prev;
    }
  }
}

template <class T>
void linear_forward_ref(T* y, const T* x, const T* W, int64_t N, int64_t in, int64_t out) {
  gemm_ref<T>(y, x, W, N, out, in, false, true);  // (N,out) = (N,in) @ [out,in]^T
}
template <class T>
void linear_backward_x_ref(T* dx, const T* dy, const T* W, int64_t N, int64_t in, int64_t out,
                           bool accumulate) {
  gemm_ref<T>(dx, dy, W, N, in, out, false, false, T(1), accumulate ? T(1) : T(0));
}
template <class T>
void linear_backward_w_ref(T* dW, const T* dy, const T* x, int64_t N, int64_t in, int64_t out) {
  gemm_ref<T>(dW, dy, x, out, in, N, true, false, T(1), T(1));  // [out,in] += dy^T @ x
}

// ---- Grouped expert GEMM ----------------------------------------------------------------
template <class T>
void grouped_linear_forward_ref(T* y, const T* x, const T* W, int64_t w_stride,
                                const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    linear_forward_ref<T>(y + r0 * out, x + r0 * in, W + e * w_stride, rows, in, out);
  }
}
template <class T>
void grouped_linear_backward_x_ref(T* dx, const T* dy, const T* W, int64_t w_stride,
                                   const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    linear_backward_x_ref<T>(dx + r0 * in, dy + r0 * out, W + e * w_stride, rows, in, out, false);
  }
}
template <class T>
void grouped_linear_backward_w_ref(T* dW, int64_t w_stride, const T* dy, const T* x,
                                   const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    linear_backward_w_ref<T>(dW + e * w_stride, dy + r0 * out, x + r0 * in, rows, in, out);
  }
}

// ---- RMSNorm ----------------------------------------------------------------------------
template <class T>
void rmsnorm_forward_ref(T* y, T* rstd, const T* x, const T* w, int64_t N, int64_t D, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    T ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    const T r = T(1) / std::sqrt(ss / T(D) + eps);
    rstd[n] = r;
    for (int64_t d = 0; d < D; ++d) y[n * D + d] = x[n * D + d] * r * w[d];
  }
}
// dx += r*(dy*w) - x * r^3/D * sum(dy*w*x) ; dw += sum over rows of dy*x*r.
template <class T>
void rmsnorm_backward_ref(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd,
                          int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const T r = rstd[n];
    T dot = 0;  // sum_d dy*w*x
    for (int64_t d = 0; d < D; ++d) dot += dy[n * D + d] * w[d] * x[n * D + d];
    for (int64_t d = 0; d < D; ++d) {
      dx[n * D + d] += r * dy[n * D + d] * w[d] - x[n * D + d] * r * r * r * dot / T(D);
      dw[d] += dy[n * D + d] * x[n * D + d] * r;
    }
  }
}

// ---- SwiGLU -----------------------------------------------------------------------------
template <class T>
void swiglu_forward_ref(T* h, const T* gu, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t f = 0; f < F; ++f) {
      const T g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f];
      h[n * F + f] = g / (T(1) + std::exp(-g)) * u;
    }
  }
}
template <class T>
void swiglu_backward_ref(T* dgu, const T* dh, const T* gu, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t f = 0; f < F; ++f) {
      const T g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f];
      const T sig = T(1) / (T(1) + std::exp(-g));
      const T d = dh[n * F + f];
      dgu[n * 2 * F + f] = d * u * sig * (T(1) + g * (T(1) - sig));  // d silu/dg
      dgu[n * 2 * F + F + f] = d * g * sig;
    }
  }
}

// ---- Embedding --------------------------------------------------------------------------
template <class T>
void embedding_forward_ref(T* x, const int32_t* tokens, const T* table, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) x[n * D + d] = table[int64_t(tokens[n]) * D + d];
}
template <class T>
void embedding_backward_ref(T* dtable, const T* dx, const int32_t* tokens, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) dtable[int64_t(tokens[n]) * D + d] += dx[n * D + d];
}

// ---- RoPE -------------------------------------------------------------------------------
template <class T>
void rope_tables_ref(T* cos, T* sin, int64_t max_pos, int64_t Dh, double theta) {
  const int64_t half = Dh / 2;
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(p) * std::pow(theta, -2.0 * double(i) / double(Dh));
      cos[p * half + i] = T(std::cos(angle));
      sin[p * half + i] = T(std::sin(angle));
    }
  }
}
template <class T>
void rope_apply_ref(T* x, const T* cos, const T* sin, int64_t B, int64_t T_, int64_t nheads,
                    int64_t Dh, int64_t row_stride, int64_t pos0, bool inverse) {
  const int64_t half = Dh / 2;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t pos = pos0 + t;
      for (int64_t h = 0; h < nheads; ++h) {
        T* v = x + (b * T_ + t) * row_stride + h * Dh;
        for (int64_t i = 0; i < half; ++i) {
          const T c = cos[pos * half + i], s = inverse ? -sin[pos * half + i] : sin[pos * half + i];
          const T x1 = v[i], x2 = v[half + i];
          v[i] = x1 * c - x2 * s;
          v[half + i] = x2 * c + x1 * s;
        }
      }
    }
  }
}

// ---- Causal GQA attention ---------------------------------------------------------------
// qkv (B, T, (H+2Hkv)*Dh); out (B, T, H*Dh); att (B, H, T, T). With bf16_products (the twins of
// attention_*_bf16) the operands of every product are rounded to bf16 first (dS before its
// scale); the products and sums stay in T.
template <class T>
T round_operand(T x, bool bf16) {
  return bf16 ? T(bf16_to_f32(f32_to_bf16(float(x)))) : x;
}

template <class T>
void attention_forward_ref(T* out, T* att, const T* qkv, int64_t B, int64_t T_, int64_t H,
                           int64_t Hkv, int64_t Dh, bool bf16_products = false) {
  const int64_t C = (H + 2 * Hkv) * Dh, group = H / Hkv;
  const T scale = T(1) / std::sqrt(T(Dh));
  const auto r = [bf16_products](T x) { return round_operand(x, bf16_products); };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < T_; ++i) {
        const T* q = qkv + (b * T_ + i) * C + h * Dh;
        T* p = att + ((b * H + h) * T_ + i) * T_;  // (T) row of probabilities
        T mx = -INFINITY;
        for (int64_t j = 0; j < T_; ++j) {
          if (j > i) {
            p[j] = 0;
            continue;
          }
          const T* k = qkv + (b * T_ + j) * C + (H + kvh) * Dh;
          T s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += r(q[d]) * r(k[d]);
          p[j] = s * scale;
          mx = p[j] > mx ? p[j] : mx;
        }
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int64_t j = 0; j <= i; ++j) p[j] /= sum;
        T* o = out + (b * T_ + i) * H * Dh + h * Dh;
        for (int64_t d = 0; d < Dh; ++d) {
          T acc = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const T* v = qkv + (b * T_ + j) * C + (H + Hkv + kvh) * Dh;
            acc += r(p[j]) * r(v[d]);
          }
          o[d] = acc;
        }
      }
    }
  }
}

// scratch: at least T elements (one row of dP).
template <class T>
void attention_backward_ref(T* dqkv, const T* dout, const T* qkv, const T* att, T* scratch,
                            int64_t B, int64_t T_, int64_t H, int64_t Hkv, int64_t Dh,
                            bool bf16_products = false) {
  const int64_t C = (H + 2 * Hkv) * Dh, group = H / Hkv;
  const T scale = T(1) / std::sqrt(T(Dh));
  const auto r = [bf16_products](T x) { return round_operand(x, bf16_products); };
  for (int64_t i = 0; i < B * T_ * C; ++i) dqkv[i] = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < T_; ++i) {
        const T* p = att + ((b * H + h) * T_ + i) * T_;
        const T* dO = dout + (b * T_ + i) * H * Dh + h * Dh;
        T* dp = scratch;
        T rowdot = 0;  // sum_j p_j dp_j, the softmax Jacobian's shared term
        for (int64_t j = 0; j <= i; ++j) {
          const T* v = qkv + (b * T_ + j) * C + (H + Hkv + kvh) * Dh;
          T s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += r(dO[d]) * r(v[d]);
          dp[j] = s;
          rowdot += p[j] * s;
        }
        const T* q = qkv + (b * T_ + i) * C + h * Dh;
        T* dq = dqkv + (b * T_ + i) * C + h * Dh;
        for (int64_t j = 0; j <= i; ++j) {
          const T ds = r(p[j] * (dp[j] - rowdot)) * scale;  // d loss / d (q.k)
          const T* k = qkv + (b * T_ + j) * C + (H + kvh) * Dh;
          T* dk = dqkv + (b * T_ + j) * C + (H + kvh) * Dh;
          T* dv = dqkv + (b * T_ + j) * C + (H + Hkv + kvh) * Dh;
          for (int64_t d = 0; d < Dh; ++d) {
            dq[d] += ds * r(k[d]);
            dk[d] += ds * r(q[d]);
            dv[d] += r(p[j]) * r(dO[d]);
          }
        }
      }
    }
  }
}

// ---- bf16 pair products (bf16_pairs.h) ----------------------------------------------------
// C (M, N) = alpha * A B + beta * C over Kp pairs of bf16 values (low half the even k), summed
// in T; A(m, kp) = A[m * a_rs + kp * a_ks], B(kp, n) = B[kp * ldb + n].
template <class T>
void gemm_bf16_pairs_ref(T* C, int64_t ldc, const uint32_t* A, int64_t a_rs, int64_t a_ks,
                         const uint32_t* B, int64_t ldb, int64_t M, int64_t N, int64_t Kp, T alpha,
                         T beta) {
  const auto lo = [](uint32_t p) { return T(bf16_to_f32(uint16_t(p & 0xFFFFu))); };
  const auto hi = [](uint32_t p) { return T(bf16_to_f32(uint16_t(p >> 16))); };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      T acc = 0;
      for (int64_t kp = 0; kp < Kp; ++kp) {
        const uint32_t a = A[m * a_rs + kp * a_ks], b = B[kp * ldb + n];
        acc += lo(a) * lo(b) + hi(a) * hi(b);
      }
      T& c = C[m * ldc + n];
      c = alpha * acc + (beta != T(0) ? beta * c : T(0));
    }
}

// ---- Fused softmax cross-entropy --------------------------------------------------------
template <class T>
double cross_entropy_forward_backward_ref(T* dlogits, T* losses, const T* logits,
                                          const int32_t* targets, int64_t N, int64_t V, T dscale) {
  double total = 0;
  std::vector<T> row(size_t(V > 0 ? V : 0));  // copy: dlogits may alias logits
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(row.data(), logits + n * V, size_t(V) * sizeof(T));
    T mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = row[v] > mx ? row[v] : mx;
    double sum = 0;  // double: 32000 float adds drift by ~1e-5
    for (int64_t v = 0; v < V; ++v) sum += double(std::exp(row[v] - mx));
    const T lse = mx + T(std::log(sum));
    losses[n] = lse - row[targets[n]];
    total += double(losses[n]);
    for (int64_t v = 0; v < V; ++v)
      dlogits[n * V + v] = (std::exp(row[v] - lse) - (v == targets[n] ? T(1) : T(0))) * dscale;
  }
  return total;
}
template <class T>
double cross_entropy_forward_ref(T* losses, const T* logits, const int32_t* targets, int64_t N,
                                 int64_t V) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = logits + n * V;
    T mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = row[v] > mx ? row[v] : mx;
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += double(std::exp(row[v] - mx));
    losses[n] = mx + T(std::log(sum)) - row[targets[n]];
    total += double(losses[n]);
  }
  return total;
}

// ---- AdamW (PyTorch semantics) ----------------------------------------------------------
template <class T>
void adamw_step_ref(T* p, T* m, T* v, const T* g, int64_t n, T lr, T beta1, T beta2, T eps,
                    T weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= T(1) - lr * weight_decay;
    m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
    v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
    const T denom = std::sqrt(v[i]) / T(std::sqrt(bc2)) + eps;
    p[i] -= T(double(lr) / bc1) * m[i] / denom;
  }
}

// ---- FP8 tile quantization (quantize.h) --------------------------------------------------
// x (rows, cols) -> y, the dequantized E4M3 values, in tiles of tile_rows x tile_cols (the last
// ones shorter). Rows are split into groups at offsets (groups + 1 entries; nullptr = one group)
// and tiles never cross a group boundary. Scale 2^ceil(log2(amax / 448)) (1 if amax = 0), the
// E4M3 rounding of core/dtype.h; a tile with a non-finite value becomes NaN.
inline void fp8_quantize_tiles_ref(float* y, const float* x, int64_t rows, int64_t cols,
                                   int64_t tile_rows, int64_t tile_cols,
                                   const int64_t* offsets = nullptr, int64_t groups = 1) {
  const int64_t one[2] = {0, rows};
  if (!offsets) offsets = one, groups = 1;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r0 = offsets[g]; r0 < offsets[g + 1]; r0 += tile_rows)
      for (int64_t c0 = 0; c0 < cols; c0 += tile_cols) {
        const int64_t r1 = std::min(r0 + tile_rows, offsets[g + 1]);
        const int64_t c1 = std::min(c0 + tile_cols, cols);
        double amax = 0;
        bool finite = true;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            finite = finite && std::isfinite(x[r * cols + c]);
            amax = std::max(amax, std::fabs(double(x[r * cols + c])));
          }
        const double s = amax > 0 ? std::exp2(std::ceil(std::log2(amax / 448.0))) : 1.0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c)
            y[r * cols + c] =
                finite
                    ? float(double(fp8e4m3_to_f32(f32_to_fp8e4m3(float(x[r * cols + c] / s)))) * s)
                    : NAN;
      }
}

}  // namespace moe::cpu
