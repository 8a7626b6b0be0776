// Fast kernels (kernels.h) against their scalar *_ref twins (ref.h) in float, on odd sizes and
// edge cases; determinism of the reducing backward kernels; AdamW against PyTorch's numbers.
// Attention has its own file (test_kernels_attention.cpp).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernel_checks.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/ref.h"

namespace moe::cpu {
namespace {

using testing::bitwise_equal;
using testing::close;
using testing::randn;

// ---- GEMM ---------------------------------------------------------------------------------

struct GemmShape {
  int64_t M, N, K;
};

TEST(Gemm, MatchesRefAllTransposesAlphaBeta) {
  const GemmShape shapes[] = {{1, 1, 1}, {17, 33, 9}, {64, 48, 128}, {130, 70, 257}, {3, 200, 5}};
  uint32_t seed = 1;
  for (const auto& s : shapes) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float alpha : {1.0f, 0.5f})
          for (float beta : {0.0f, 1.0f}) {
            const auto A = randn(size_t(s.M * s.K), seed++);
            const auto B = randn(size_t(s.K * s.N), seed++);
            auto C = randn(size_t(s.M * s.N), seed++);
            if (beta == 0.0f) C.assign(C.size(), std::numeric_limits<float>::quiet_NaN());
            auto C_ref = C;
            gemm(C.data(), A.data(), B.data(), s.M, s.N, s.K, ta, tb, alpha, beta);
            gemm_ref<float>(C_ref.data(), A.data(), B.data(), s.M, s.N, s.K, ta, tb, alpha, beta);
            EXPECT_TRUE(close(C, C_ref, 1e-5,
                              "gemm M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) +
                                  " K=" + std::to_string(s.K) + " ta=" + std::to_string(ta) +
                                  " tb=" + std::to_string(tb) + " alpha=" +
                                  std::to_string(alpha) + " beta=" + std::to_string(beta)));
          }
  }
}

TEST(Gemm, EmptySizes) {
  std::vector<float> C(12, 7.0f), A(12, 1.0f), B(12, 1.0f);
  gemm(C.data(), A.data(), B.data(), 0, 4, 3, false, false);  // M = 0: no-op
  EXPECT_EQ(C, std::vector<float>(12, 7.0f));
  gemm(C.data(), A.data(), B.data(), 3, 4, 0, false, false, 1.0f, 1.0f);  // K = 0, beta 1: keep
  EXPECT_EQ(C, std::vector<float>(12, 7.0f));
  gemm(C.data(), A.data(), B.data(), 3, 4, 0, false, false);  // K = 0, beta 0: clear
  EXPECT_EQ(C, std::vector<float>(12, 0.0f));
  EXPECT_THROW(gemm(C.data(), A.data(), B.data(), -1, 4, 3, false, false), moe::Error);
}

TEST(Gemm, RepeatedCallsAreBitwiseEqual) {  // second call hits the primitive cache
  const auto A = randn(96 * 40, 5), B = randn(40 * 72, 6);
  std::vector<float> C1(96 * 72), C2(96 * 72);
  gemm(C1.data(), A.data(), B.data(), 96, 72, 40, false, false);
  gemm(C2.data(), A.data(), B.data(), 96, 72, 40, false, false);
  EXPECT_TRUE(bitwise_equal(C1, C2));
}

// Transposed-A products with 256 rows of C or more (the weight gradients) run as row tasks of
// 128 or 256 rows, each on one thread (gemm.cpp gemm_row_tasks): against the ref with a tail
// task and with beta accumulating, and bitwise the same on one thread and on all.
TEST(Gemm, TransposedARowTasksMatchRefAndIgnoreTheThreadCount) {
  uint32_t seed = 200;
  for (const GemmShape s : {GemmShape{300, 70, 129}, GemmShape{256, 33, 40},
                            GemmShape{600, 48, 64}})
    for (int tb = 0; tb < 2; ++tb) {
      const auto A = randn(size_t(s.K * s.M), seed++), B = randn(size_t(s.K * s.N), seed++);
      const auto C0 = randn(size_t(s.M * s.N), seed++);
      auto C = C0, C1 = C0, C_ref = C0;
      gemm(C.data(), A.data(), B.data(), s.M, s.N, s.K, true, tb, 0.5f, 1.0f);
      gemm_ref<float>(C_ref.data(), A.data(), B.data(), s.M, s.N, s.K, true, tb, 0.5f, 1.0f);
      const std::string tag = "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) +
                              " K=" + std::to_string(s.K) + " tb=" + std::to_string(tb);
      EXPECT_TRUE(close(C, C_ref, 1e-5, tag));
      const int saved = omp_get_max_threads();
      omp_set_num_threads(1);
      gemm(C1.data(), A.data(), B.data(), s.M, s.N, s.K, true, tb, 0.5f, 1.0f);
      omp_set_num_threads(saved);
      EXPECT_TRUE(bitwise_equal(C, C1)) << tag;
    }
}

// Shared cached primitives run on many threads at once (user scratchpad, per-thread streams).
TEST(Gemm, ConcurrentCallsFromAParallelRegion) {
  const int64_t M = 70, N = 45, K = 33;
  const auto A = randn(M * K, 7), B = randn(K * N, 8);
  std::vector<float> want(M * N);
  gemm_ref<float>(want.data(), A.data(), B.data(), M, N, K, false, true);
  std::vector<std::vector<float>> got(8, std::vector<float>(M * N));
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t < 8; ++t)
    gemm(got[t].data(), A.data(), B.data(), M, N, K, false, true);
  for (int t = 0; t < 8; ++t) EXPECT_TRUE(close(got[t], want, 1e-5, "task " + std::to_string(t)));
}

TEST(Linear, ForwardAndBackwardMatchRef) {
  const int64_t N = 37, in = 48, out = 29;
  const auto x = randn(N * in, 10), W = randn(out * in, 11), dy = randn(N * out, 12);
  std::vector<float> y(N * out), y_ref(N * out);
  linear_forward(y.data(), x.data(), W.data(), N, in, out);
  linear_forward_ref<float>(y_ref.data(), x.data(), W.data(), N, in, out);
  EXPECT_TRUE(close(y, y_ref, 1e-5, "linear_forward"));
  for (bool acc : {false, true}) {
    auto dx = randn(N * in, 13), dx_ref = dx;
    linear_backward_x(dx.data(), dy.data(), W.data(), N, in, out, acc);
    linear_backward_x_ref<float>(dx_ref.data(), dy.data(), W.data(), N, in, out, acc);
    EXPECT_TRUE(close(dx, dx_ref, 1e-5, "linear_backward_x acc=" + std::to_string(acc)));
  }
  auto dW = randn(out * in, 14), dW_ref = dW;  // accumulates onto existing values
  linear_backward_w(dW.data(), dy.data(), x.data(), N, in, out);
  linear_backward_w_ref<float>(dW_ref.data(), dy.data(), x.data(), N, in, out);
  EXPECT_TRUE(close(dW, dW_ref, 1e-5, "linear_backward_w"));
}

// ---- Grouped GEMM -------------------------------------------------------------------------

struct GroupedCase {
  int64_t in, out;
  std::vector<int64_t> sizes;  // rows per expert
};

TEST(GroupedLinear, MatchesRefWithEmptyGroups) {
  // Rows and out above the kernel's 256-row tasks exercise its task split and tail.
  const GroupedCase cases[] = {{24, 40, {0, 5, 0, 17, 1, 33}}, {24, 40, {0, 0, 0}},
                               {24, 40, {64}},                  {24, 40, {3, 130, 0, 7}},
                               {33, 300, {0, 600, 3, 257}},     {512, 517, {1, 0, 300}}};
  uint32_t seed = 100;
  for (const auto& [in, out, sizes] : cases) {
    const int64_t w_stride = in * out + 8;  // padded expert stride
    const int64_t E = int64_t(sizes.size());
    std::vector<int64_t> offsets(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + sizes[e];
    const int64_t N = offsets[E];
    const std::string tag = "E=" + std::to_string(E) + " N=" + std::to_string(N) +
                            " in=" + std::to_string(in) + " out=" + std::to_string(out);
    const auto x = randn(N * in, seed++), W = randn(E * w_stride, seed++);
    const auto dy = randn(N * out, seed++);
    std::vector<float> y(N * out), y_ref(N * out);
    grouped_linear_forward(y.data(), x.data(), W.data(), w_stride, offsets.data(), E, in, out);
    grouped_linear_forward_ref<float>(y_ref.data(), x.data(), W.data(), w_stride, offsets.data(),
                                      E, in, out);
    EXPECT_TRUE(close(y, y_ref, 1e-5, "grouped_linear_forward " + tag));
    std::vector<float> dx(N * in), dx_ref(N * in);
    grouped_linear_backward_x(dx.data(), dy.data(), W.data(), w_stride, offsets.data(), E, in,
                              out);
    grouped_linear_backward_x_ref<float>(dx_ref.data(), dy.data(), W.data(), w_stride,
                                         offsets.data(), E, in, out);
    EXPECT_TRUE(close(dx, dx_ref, 1e-5, "grouped_linear_backward_x " + tag));
    auto dW = randn(E * w_stride, seed++), dW_ref = dW;  // += onto existing values
    grouped_linear_backward_w(dW.data(), w_stride, dy.data(), x.data(), offsets.data(), E, in,
                              out);
    grouped_linear_backward_w_ref<float>(dW_ref.data(), w_stride, dy.data(), x.data(),
                                         offsets.data(), E, in, out);
    EXPECT_TRUE(close(dW, dW_ref, 1e-5, "grouped_linear_backward_w " + tag));
  }
}

TEST(GroupedLinear, SameBitsForOneAndAllThreads) {
  const int64_t in = 64, out = 300, E = 3, w_stride = in * out;
  const std::vector<int64_t> offsets = {0, 700, 700, 1000};
  const int64_t N = offsets[E];
  const auto x = randn(N * in, 90), W = randn(E * w_stride, 91), dy = randn(N * out, 92);
  auto run = [&](std::vector<float>& y, std::vector<float>& dx, std::vector<float>& dW) {
    y.assign(N * out, 0.0f);
    dx.assign(N * in, 0.0f);
    dW.assign(E * w_stride, 0.0f);
    grouped_linear_forward(y.data(), x.data(), W.data(), w_stride, offsets.data(), E, in, out);
    grouped_linear_backward_x(dx.data(), dy.data(), W.data(), w_stride, offsets.data(), E, in,
                              out);
    grouped_linear_backward_w(dW.data(), w_stride, dy.data(), x.data(), offsets.data(), E, in,
                              out);
  };
  std::vector<float> y1, dx1, dW1, yn, dxn, dWn;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  run(y1, dx1, dW1);
  omp_set_num_threads(saved);
  run(yn, dxn, dWn);
  EXPECT_TRUE(bitwise_equal(y1, yn));
  EXPECT_TRUE(bitwise_equal(dx1, dxn));
  EXPECT_TRUE(bitwise_equal(dW1, dWn));
}

TEST(GroupedLinear, RejectsBadOffsets) {
  const std::vector<int64_t> offsets = {0, 5, 3};
  std::vector<float> buf(1000);
  EXPECT_THROW(grouped_linear_forward(buf.data(), buf.data(), buf.data(), 4, offsets.data(), 2,
                                      2, 2),
               moe::Error);
}

// ---- RMSNorm, SwiGLU, embedding -------------------------------------------------------------

TEST(RmsNorm, ForwardAndBackwardMatchRef) {
  for (auto [N, D] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {130, 512}, {5, 1000}}) {
    const std::string tag = "N=" + std::to_string(N) + " D=" + std::to_string(D);
    const auto x = randn(N * D, 20), w = randn(D, 21), dy = randn(N * D, 22);
    std::vector<float> y(N * D), y_ref(N * D), r(N), r_ref(N);
    rmsnorm_forward(y.data(), r.data(), x.data(), w.data(), N, D, 1e-6f);
    rmsnorm_forward_ref<float>(y_ref.data(), r_ref.data(), x.data(), w.data(), N, D, 1e-6f);
    EXPECT_TRUE(close(y, y_ref, 1e-5, "rmsnorm_forward y " + tag));
    EXPECT_TRUE(close(r, r_ref, 1e-5, "rmsnorm_forward rstd " + tag));
    auto dx = randn(N * D, 23), dx_ref = dx;  // both outputs accumulate
    auto dw = randn(D, 24), dw_ref = dw;
    rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), r.data(), N, D);
    rmsnorm_backward_ref<float>(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), w.data(),
                                r.data(), N, D);
    EXPECT_TRUE(close(dx, dx_ref, 1e-5, "rmsnorm_backward dx " + tag));
    EXPECT_TRUE(close(dw, dw_ref, 1e-5, "rmsnorm_backward dw " + tag));
  }
}

TEST(RmsNorm, BackwardIsDeterministic) {
  const int64_t N = 1031, D = 300;
  const auto x = randn(N * D, 30), w = randn(D, 31), dy = randn(N * D, 32);
  std::vector<float> y(N * D), r(N);
  rmsnorm_forward(y.data(), r.data(), x.data(), w.data(), N, D, 1e-5f);
  std::vector<float> dx1(N * D), dx2(N * D), dw1(D), dw2(D);
  rmsnorm_backward(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), r.data(), N, D);
  rmsnorm_backward(dx2.data(), dw2.data(), dy.data(), x.data(), w.data(), r.data(), N, D);
  EXPECT_TRUE(bitwise_equal(dw1, dw2));
  EXPECT_TRUE(bitwise_equal(dx1, dx2));
}

TEST(SwiGlu, ForwardAndBackwardMatchRef) {
  for (auto [N, F] : {std::pair<int64_t, int64_t>{1, 1}, {9, 37}, {64, 256}}) {
    const std::string tag = "N=" + std::to_string(N) + " F=" + std::to_string(F);
    auto gu = randn(N * 2 * F, 40, 3.0f);
    gu[0] = -100.0f;  // far tails of the sigmoid
    if (gu.size() > 2) gu[1] = 100.0f;
    const auto dh = randn(N * F, 41);
    std::vector<float> h(N * F), h_ref(N * F);
    swiglu_forward(h.data(), gu.data(), N, F);
    swiglu_forward_ref<float>(h_ref.data(), gu.data(), N, F);
    EXPECT_TRUE(close(h, h_ref, 1e-6, "swiglu_forward " + tag));
    std::vector<float> dgu(N * 2 * F), dgu_ref(N * 2 * F);
    swiglu_backward(dgu.data(), dh.data(), gu.data(), N, F);
    swiglu_backward_ref<float>(dgu_ref.data(), dh.data(), gu.data(), N, F);
    EXPECT_TRUE(close(dgu, dgu_ref, 1e-6, "swiglu_backward " + tag));
  }
}

TEST(Embedding, ForwardAndBackwardMatchRefAndAreDeterministic) {
  const int64_t V = 50, D = 130, N = 300;
  std::vector<int32_t> tokens(N);
  for (int64_t n = 0; n < N; ++n) tokens[n] = int32_t((n * 7) % 13 + (n % 3) * 17);  // repeats
  const auto table = randn(V * D, 50), dx = randn(N * D, 51);
  std::vector<float> x(N * D), x_ref(N * D);
  embedding_forward(x.data(), tokens.data(), table.data(), N, D);
  embedding_forward_ref<float>(x_ref.data(), tokens.data(), table.data(), N, D);
  EXPECT_TRUE(bitwise_equal(x, x_ref));
  auto dt1 = randn(V * D, 52), dt2 = dt1, dt_ref = dt1;
  embedding_backward(dt1.data(), dx.data(), tokens.data(), N, D);
  embedding_backward(dt2.data(), dx.data(), tokens.data(), N, D);
  embedding_backward_ref<float>(dt_ref.data(), dx.data(), tokens.data(), N, D);
  EXPECT_TRUE(close(dt1, dt_ref, 1e-6, "embedding_backward"));
  EXPECT_TRUE(bitwise_equal(dt1, dt2));
}

// ---- RoPE -----------------------------------------------------------------------------------

TEST(Rope, TablesAndApplyMatchRef) {
  const int64_t max_pos = 300, Dh = 16, half = Dh / 2;
  std::vector<float> c(max_pos * half), s(max_pos * half), c_ref(c.size()), s_ref(s.size());
  rope_tables(c.data(), s.data(), max_pos, Dh, 10000.0);
  rope_tables_ref<float>(c_ref.data(), s_ref.data(), max_pos, Dh, 10000.0);
  EXPECT_TRUE(close(c, c_ref, 1e-7, "rope_tables cos"));
  EXPECT_TRUE(close(s, s_ref, 1e-7, "rope_tables sin"));
  EXPECT_FLOAT_EQ(c[1 * half + 0], std::cos(1.0f));  // position 1, frequency 1
  // Rotate q and k heads inside a qkv-shaped buffer: 3 heads of 5, stride 5*Dh, pos0 = 17.
  const int64_t B = 2, T = 11, nheads = 3, stride = 5 * Dh, pos0 = 17;
  const auto x0 = randn(B * T * stride, 60);
  for (bool inverse : {false, true}) {
    auto x = x0, x_ref = x0;
    rope_apply(x.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0, inverse);
    rope_apply_ref<float>(x_ref.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0,
                          inverse);
    EXPECT_TRUE(close(x, x_ref, 1e-6, "rope_apply inverse=" + std::to_string(inverse)));
    // Columns past the rotated heads are untouched.
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t j = nheads * Dh; j < stride; ++j)
        ASSERT_EQ(x[r * stride + j], x0[r * stride + j]);
  }
  auto x = x0;  // forward then inverse is the identity
  rope_apply(x.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0, false);
  rope_apply(x.data(), c.data(), s.data(), B, T, nheads, Dh, stride, pos0, true);
  EXPECT_TRUE(close(x, x0, 1e-6, "rope inverse(rope(x))"));
  EXPECT_THROW(rope_tables(c.data(), s.data(), max_pos, 7, 10000.0), moe::Error);
}

// ---- Cross-entropy ----------------------------------------------------------------------------

TEST(CrossEntropy, MatchesRefIncludingAliasing) {
  for (auto [N, V] : {std::pair<int64_t, int64_t>{1, 1}, {5, 1001}, {64, 32000}}) {
    const std::string tag = "N=" + std::to_string(N) + " V=" + std::to_string(V);
    auto logits = randn(N * V, 70, 4.0f);
    logits[0] += 60.0f;  // a large logit: needs the max subtraction
    std::vector<int32_t> targets(N);
    for (int64_t n = 0; n < N; ++n) targets[n] = int32_t((n * 7919) % V);
    const float dscale = 1.0f / float(N);
    std::vector<float> d(N * V), d_ref(N * V), l(N), l_ref(N);
    const double tot = cross_entropy_forward_backward(d.data(), l.data(), logits.data(),
                                                      targets.data(), N, V, dscale);
    const double tot_ref = cross_entropy_forward_backward_ref<float>(
        d_ref.data(), l_ref.data(), logits.data(), targets.data(), N, V, dscale);
    EXPECT_TRUE(close(d, d_ref, 1e-5, "cross_entropy dlogits " + tag));
    EXPECT_TRUE(close(l, l_ref, 1e-5, "cross_entropy losses " + tag));
    EXPECT_NEAR(tot, tot_ref, 1e-5 * std::fabs(tot_ref) + 1e-6) << tag;
    auto inplace = logits;  // dlogits aliases logits
    std::vector<float> l2(N);
    const double tot2 = cross_entropy_forward_backward(inplace.data(), l2.data(), inplace.data(),
                                                       targets.data(), N, V, dscale);
    EXPECT_TRUE(bitwise_equal(inplace, d)) << tag;
    EXPECT_EQ(tot2, tot) << tag;
    std::vector<float> l3(N);
    const double tot3 = cross_entropy_forward(l3.data(), logits.data(), targets.data(), N, V);
    EXPECT_TRUE(close(l3, l_ref, 1e-5, "cross_entropy_forward " + tag));
    EXPECT_NEAR(tot3, tot_ref, 1e-5 * std::fabs(tot_ref) + 1e-6) << tag;
  }
  std::vector<float> x(4), l(2);
  const std::vector<int32_t> bad = {0, 2};
  EXPECT_THROW(cross_entropy_forward(l.data(), x.data(), bad.data(), 2, 2), moe::Error);
}

// ---- AdamW ------------------------------------------------------------------------------------

TEST(AdamW, TwoStepsMatchPyTorch) {
  std::vector<float> p = {0.5f, -1.25f, 2.0f, 0.0f, 3.0e-3f};
  const std::vector<float> g1 = {0.1f, -0.2f, 0.3f, 1.0e-4f, -5.0f};
  const std::vector<float> g2 = {-0.05f, 0.4f, 0.3f, 0.0f, 2.5f};
  std::vector<float> m(5, 0.0f), v(5, 0.0f);
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  auto p_ref = p, m_ref = m, v_ref = v;
  // By hand, in double: the same two steps, written out.
  std::vector<double> pd(p.begin(), p.end()), md(5, 0.0), vd(5, 0.0);
  for (int step = 1; step <= 2; ++step) {
    const auto& g = step == 1 ? g1 : g2;
    adamw_step(p.data(), m.data(), v.data(), g.data(), 5, lr, b1, b2, eps, wd, step);
    adamw_step_ref<float>(p_ref.data(), m_ref.data(), v_ref.data(), g.data(), 5, lr, b1, b2, eps,
                          wd, step);
    for (int i = 0; i < 5; ++i) {
      pd[i] *= 1.0 - double(lr) * double(wd);
      md[i] = double(b1) * md[i] + (1.0 - double(b1)) * double(g[i]);
      vd[i] = double(b2) * vd[i] + (1.0 - double(b2)) * double(g[i]) * double(g[i]);
      const double mhat = md[i] / (1.0 - std::pow(double(b1), step));
      const double vhat = vd[i] / (1.0 - std::pow(double(b2), step));
      pd[i] -= double(lr) * mhat / (std::sqrt(vhat) + double(eps));
    }
  }
  // torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), torch 1.13.
  const double torch_p[5] = {0.48632681369781494, -1.2411450147628784, 1.976012110710144,
                             -0.016774505376815796, 0.01566769741475582};
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(p[i], torch_p[i], 2e-6 * std::fabs(torch_p[i]) + 1e-8) << "p[" << i << "]";
    EXPECT_NEAR(p[i], pd[i], 2e-6 * std::fabs(pd[i]) + 1e-8) << "p[" << i << "] vs by hand";
    EXPECT_NEAR(p[i], p_ref[i], 1e-6 * std::fabs(p_ref[i]) + 1e-9) << "p[" << i << "] vs ref";
  }
  EXPECT_NEAR(m[4], -0.2, 1e-7);  // 0.9*0.1*(-5) + 0.1*2.5
  EXPECT_NEAR(v[4], 1.5, 1e-6);   // 0.95*0.05*25 + 0.05*6.25
  EXPECT_THROW(adamw_step(p.data(), m.data(), v.data(), g1.data(), 5, lr, b1, b2, eps, wd, 0),
               moe::Error);
}

TEST(AdamW, LargeVectorMatchesRef) {
  const int64_t n = 10007;
  auto p = randn(n, 80), m = randn(n, 81, 0.1f), v = randn(n, 82, 0.1f);
  for (auto& x : v) x = x * x;
  const auto g = randn(n, 83);
  auto p_ref = p, m_ref = m, v_ref = v;
  adamw_step(p.data(), m.data(), v.data(), g.data(), n, 3e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 7);
  adamw_step_ref<float>(p_ref.data(), m_ref.data(), v_ref.data(), g.data(), n, 3e-4f, 0.9f,
                        0.999f, 1e-8f, 0.01f, 7);
  EXPECT_TRUE(close(p, p_ref, 1e-6, "adamw p"));
  EXPECT_TRUE(close(m, m_ref, 1e-6, "adamw m"));
  EXPECT_TRUE(close(v, v_ref, 1e-6, "adamw v"));
}

}  // namespace
}  // namespace moe::cpu
