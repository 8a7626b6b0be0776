// Finite-difference checks, in double, of every backward *_ref kernel (ref.h). Each test picks a
// scalar loss L = sum(R * output) with a fixed random R, takes central differences of L with
// respect to every input element, and compares them with the analytic backward fed dout = R.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/mla_ref.h"
#include "kernels/cpu/ref.h"

namespace moe::cpu {
namespace {

using Vec = std::vector<double>;

Vec randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() with respect to each element of x (x is restored).
template <class F>
Vec numeric_grad(Vec& x, F loss, double h = 1e-6) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

// max |analytic - numeric| relative to max |numeric|, naming the worst element.
::testing::AssertionResult grads_agree(const Vec& analytic, const Vec& numeric,
                                       const std::string& what, double tol = 1e-6) {
  double max_diff = 0, max_mag = 1e-12;
  size_t worst = 0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    const double d = std::fabs(analytic[i] - numeric[i]);
    if (!(d <= max_diff)) max_diff = d, worst = i;
    max_mag = std::max(max_mag, std::fabs(numeric[i]));
  }
  if (max_diff / max_mag <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": max |analytic - numeric| " << max_diff << " at [" << worst
         << "] (analytic " << analytic[worst] << ", numeric " << numeric[worst]
         << "), relative " << max_diff / max_mag << " > " << tol;
}

TEST(GradCheck, Linear) {
  const int64_t N = 5, in = 4, out = 3;
  Vec x = randn(N * in, 1), W = randn(out * in, 2);
  const Vec R = randn(N * out, 3);
  auto loss = [&] {
    Vec y(N * out);
    linear_forward_ref<double>(y.data(), x.data(), W.data(), N, in, out);
    return dot(y, R);
  };
  Vec dx(N * in, 0.0), dW(out * in, 0.0);
  linear_backward_x_ref<double>(dx.data(), R.data(), W.data(), N, in, out, false);
  linear_backward_w_ref<double>(dW.data(), R.data(), x.data(), N, in, out);
  EXPECT_TRUE(grads_agree(dx, numeric_grad(x, loss), "linear dx"));
  EXPECT_TRUE(grads_agree(dW, numeric_grad(W, loss), "linear dW"));
}

TEST(GradCheck, GroupedLinear) {
  const int64_t in = 3, out = 4, E = 4, w_stride = in * out + 2;  // padded stride
  const std::vector<int64_t> offsets = {0, 2, 2, 5, 6};           // group 1 is empty
  const int64_t N = offsets[E];
  Vec x = randn(N * in, 4), W = randn(E * w_stride, 5);
  const Vec R = randn(N * out, 6);
  auto loss = [&] {
    Vec y(N * out);
    grouped_linear_forward_ref<double>(y.data(), x.data(), W.data(), w_stride, offsets.data(), E,
                                       in, out);
    return dot(y, R);
  };
  Vec dx(N * in, 0.0), dW(E * w_stride, 0.0);
  grouped_linear_backward_x_ref<double>(dx.data(), R.data(), W.data(), w_stride, offsets.data(),
                                        E, in, out);
  grouped_linear_backward_w_ref<double>(dW.data(), w_stride, R.data(), x.data(), offsets.data(),
                                        E, in, out);
  EXPECT_TRUE(grads_agree(dx, numeric_grad(x, loss), "grouped_linear dx"));
  EXPECT_TRUE(grads_agree(dW, numeric_grad(W, loss), "grouped_linear dW"));
}

TEST(GradCheck, RmsNorm) {
  const int64_t N = 4, D = 7;
  Vec x = randn(N * D, 7), w = randn(D, 8);
  const Vec R = randn(N * D, 9);
  Vec rstd(N);
  auto loss = [&] {
    Vec y(N * D);
    rmsnorm_forward_ref<double>(y.data(), rstd.data(), x.data(), w.data(), N, D, 1e-5);
    return dot(y, R);
  };
  loss();  // fills rstd at the unperturbed point
  Vec dx(N * D, 0.0), dw(D, 0.0);
  rmsnorm_backward_ref<double>(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N,
                               D);
  EXPECT_TRUE(grads_agree(dx, numeric_grad(x, loss), "rmsnorm dx"));
  EXPECT_TRUE(grads_agree(dw, numeric_grad(w, loss), "rmsnorm dw"));
}

TEST(GradCheck, SwiGlu) {
  const int64_t N = 3, F = 5;
  Vec gu = randn(N * 2 * F, 10, 2.0);
  const Vec R = randn(N * F, 11);
  auto loss = [&] {
    Vec h(N * F);
    swiglu_forward_ref<double>(h.data(), gu.data(), N, F);
    return dot(h, R);
  };
  Vec dgu(N * 2 * F);
  swiglu_backward_ref<double>(dgu.data(), R.data(), gu.data(), N, F);
  EXPECT_TRUE(grads_agree(dgu, numeric_grad(gu, loss), "swiglu dgu"));
}

TEST(GradCheck, RopeBackwardIsTheInverseRotation) {
  const int64_t B = 2, T = 3, nheads = 2, Dh = 6, stride = 3 * Dh, pos0 = 5;
  Vec c((pos0 + T) * Dh / 2), s(c.size());
  rope_tables_ref<double>(c.data(), s.data(), pos0 + T, Dh, 10000.0);
  Vec x = randn(B * T * stride, 12);
  const Vec R = randn(B * T * stride, 13);
  auto loss = [&] {
    Vec y = x;
    rope_apply_ref<double>(y.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0, false);
    return dot(y, R);
  };
  Vec dx = R;  // backward: rotate the incoming gradient by the transpose
  rope_apply_ref<double>(dx.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0, true);
  EXPECT_TRUE(grads_agree(dx, numeric_grad(x, loss), "rope dx"));
}

TEST(GradCheck, Embedding) {
  const int64_t V = 6, D = 4, N = 7;
  const std::vector<int32_t> tokens = {1, 4, 1, 0, 5, 4, 1};  // repeats; token 2, 3 unused
  Vec table = randn(V * D, 14);
  const Vec R = randn(N * D, 15);
  auto loss = [&] {
    Vec x(N * D);
    embedding_forward_ref<double>(x.data(), tokens.data(), table.data(), N, D);
    return dot(x, R);
  };
  Vec dtable(V * D, 0.0);
  embedding_backward_ref<double>(dtable.data(), R.data(), tokens.data(), N, D);
  EXPECT_TRUE(grads_agree(dtable, numeric_grad(table, loss), "embedding dtable"));
}

TEST(GradCheck, CrossEntropy) {
  const int64_t N = 4, V = 9;
  const std::vector<int32_t> targets = {0, 8, 3, 3};
  Vec logits = randn(N * V, 16, 2.0);
  const double dscale = 0.25;  // gradient of the mean loss
  auto loss = [&] {
    Vec l(N);
    return dscale * cross_entropy_forward_ref<double>(l.data(), logits.data(), targets.data(), N,
                                                      V);
  };
  Vec dlogits(N * V), l(N);
  cross_entropy_forward_backward_ref<double>(dlogits.data(), l.data(), logits.data(),
                                             targets.data(), N, V, dscale);
  EXPECT_TRUE(grads_agree(dlogits, numeric_grad(logits, loss), "cross_entropy dlogits"));
}

struct AttnShape {
  int64_t B, T, H, Hkv, Dh;
};

TEST(GradCheck, AttentionGqa) {
  const AttnShape shapes[] = {{2, 5, 4, 2, 4}, {1, 6, 2, 2, 3}, {2, 4, 3, 1, 2}, {1, 1, 2, 1, 2}};
  uint32_t seed = 20;
  for (const auto& sh : shapes) {
    const std::string tag = "B=" + std::to_string(sh.B) + " T=" + std::to_string(sh.T) +
                            " H=" + std::to_string(sh.H) + " Hkv=" + std::to_string(sh.Hkv);
    const int64_t C = (sh.H + 2 * sh.Hkv) * sh.Dh;
    Vec qkv = randn(sh.B * sh.T * C, seed++);
    const Vec R = randn(sh.B * sh.T * sh.H * sh.Dh, seed++);
    Vec att(sh.B * sh.H * sh.T * sh.T);
    auto loss = [&] {
      Vec out(sh.B * sh.T * sh.H * sh.Dh);
      attention_forward_ref<double>(out.data(), att.data(), qkv.data(), sh.B, sh.T, sh.H, sh.Hkv,
                                    sh.Dh);
      return dot(out, R);
    };
    loss();  // att at the unperturbed point
    const Vec att0 = att;
    Vec dqkv(qkv.size()), scratch(sh.T);
    attention_backward_ref<double>(dqkv.data(), R.data(), qkv.data(), att0.data(), scratch.data(),
                                   sh.B, sh.T, sh.H, sh.Hkv, sh.Dh);
    EXPECT_TRUE(grads_agree(dqkv, numeric_grad(qkv, loss), "attention dqkv " + tag));
  }
}

// MLA's attention as the model runs it (model_attention.cpp, kernels/cpu/mla.h): RoPE on each
// head's q rope part and on the shared k_pe (inside the kv_a output row, after c_kv), the packed
// GQA kernel at head width Da, the output narrowed to dv per head. Backward: widen, attention
// backward, unpack (k_pe's gradient summed over heads), inverse RoPE. Checked against central
// differences of sum(R * out) with respect to q, kv and the kv_a row.
TEST(GradCheck, MlaAttention) {
  struct Shape {
    int64_t B, T, H, rkv, dn, dr, dv;
  };
  const Shape shapes[] = {{2, 4, 3, 2, 3, 4, 5}, {1, 5, 2, 3, 2, 2, 6}};  // Da = dqk; Da = dv
  uint32_t seed = 40;
  for (const Shape& sh : shapes) {
    const int64_t N = sh.B * sh.T, dqk = sh.dn + sh.dr, Da = std::max(dqk, sh.dv);
    const int64_t Qw = sh.H * dqk, KVw = sh.H * (sh.dn + sh.dv), KVa = sh.rkv + sh.dr;
    const double q_scale = std::sqrt(double(Da) / double(dqk));
    const std::string tag = "dqk=" + std::to_string(dqk) + " dv=" + std::to_string(sh.dv);
    Vec c(sh.T * sh.dr / 2), s(c.size());
    rope_tables_ref<double>(c.data(), s.data(), sh.T, sh.dr, 10000.0);
    Vec q = randn(N * Qw, seed++), kv = randn(N * KVw, seed++), kva = randn(N * KVa, seed++);
    const Vec R = randn(N * sh.H * sh.dv, seed++);
    Vec att(sh.B * sh.H * sh.T * sh.T), qkv(N * 3 * sh.H * Da);
    auto loss = [&] {
      Vec qr = q, kr = kva, o(N * sh.H * Da), y(N * sh.H * sh.dv);
      for (int64_t h = 0; h < sh.H; ++h)
        rope_apply_ref<double>(qr.data() + h * dqk + sh.dn, c.data(), s.data(), sh.B, sh.T, 1,
                               sh.dr, Qw, 0, false);
      rope_apply_ref<double>(kr.data() + sh.rkv, c.data(), s.data(), sh.B, sh.T, 1, sh.dr, KVa, 0,
                             false);
      mla_pack_qkv_ref<double>(qkv.data(), qr.data(), kv.data(), kr.data() + sh.rkv, KVa, N, sh.H,
                               sh.dn, sh.dr, sh.dv, Da, q_scale);
      attention_forward_ref<double>(o.data(), att.data(), qkv.data(), sh.B, sh.T, sh.H, sh.H, Da);
      heads_copy_ref<double>(y.data(), o.data(), N, sh.H, sh.dv, Da, sh.dv);
      return dot(y, R);
    };
    loss();  // att and qkv at the unperturbed point
    const Vec att0 = att, qkv0 = qkv;
    Vec dO(N * sh.H * Da), dqkv(qkv.size()), scratch(sh.T);
    heads_copy_ref<double>(dO.data(), R.data(), N, sh.H, Da, sh.dv, sh.dv);
    attention_backward_ref<double>(dqkv.data(), dO.data(), qkv0.data(), att0.data(),
                                   scratch.data(), sh.B, sh.T, sh.H, sh.H, Da);
    Vec dq(q.size()), dkv(kv.size()), dkva(kva.size(), 0.0);  // c_kv columns: no gradient here
    mla_unpack_qkv_grad_ref<double>(dq.data(), dkv.data(), dkva.data() + sh.rkv, KVa, dqkv.data(),
                                    N, sh.H, sh.dn, sh.dr, sh.dv, Da, q_scale);
    for (int64_t h = 0; h < sh.H; ++h)
      rope_apply_ref<double>(dq.data() + h * dqk + sh.dn, c.data(), s.data(), sh.B, sh.T, 1,
                             sh.dr, Qw, 0, true);
    rope_apply_ref<double>(dkva.data() + sh.rkv, c.data(), s.data(), sh.B, sh.T, 1, sh.dr, KVa, 0,
                           true);
    EXPECT_TRUE(grads_agree(dq, numeric_grad(q, loss), "mla dq " + tag));
    EXPECT_TRUE(grads_agree(dkv, numeric_grad(kv, loss), "mla dkv " + tag));
    EXPECT_TRUE(grads_agree(dkva, numeric_grad(kva, loss), "mla dk_pe " + tag));
  }
}

}  // namespace
}  // namespace moe::cpu
