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

}  // namespace
}  // namespace moe::cpu
