// Causal GQA attention: fast kernels against attention_*_ref in float on sizes that cross the
// kernel's row blocks, GQA groupings (H = Hkv, H = 2 Hkv, Hkv = 1), T = 1; the saved
// probabilities' shape (rows sum to 1, zeros above the diagonal); bitwise determinism. And the
// fp32 attention's register-tiled product (bf16_pairs.h gemm_f32_small) against a double sum.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernel_checks.h"
#include "kernels/cpu/bf16_pairs.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/ref.h"

namespace moe::cpu {
namespace {

using testing::close;
using testing::randn;

struct AttnShape {
  int64_t B, T, H, Hkv, Dh;
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
           " Hkv=" + std::to_string(Hkv) + " Dh=" + std::to_string(Dh);
  }
};

std::vector<float> scratch_for(int64_t T, int64_t Dh) {
  return std::vector<float>(attention_backward_scratch(T, Dh, omp_get_max_threads()));
}

TEST(Attention, ForwardAndBackwardMatchRef) {
  const AttnShape shapes[] = {
      {1, 1, 1, 1, 8},    {2, 1, 4, 2, 16},   {2, 7, 4, 2, 16},   {2, 33, 4, 4, 8},
      {1, 70, 3, 1, 32},  {2, 130, 4, 2, 64}, {1, 129, 4, 1, 24}, {3, 64, 2, 2, 64},
      {1, 520, 2, 1, 128}};  // K^T too big for the stack path
  uint32_t seed = 1;
  for (const auto& s : shapes) {
    const int64_t C = (s.H + 2 * s.Hkv) * s.Dh;
    const auto qkv = randn(s.B * s.T * C, seed++, 1.5f);
    const auto dout = randn(s.B * s.T * s.H * s.Dh, seed++);
    std::vector<float> out(s.B * s.T * s.H * s.Dh), out_ref(out.size());
    std::vector<float> att(s.B * s.H * s.T * s.T, -1.0f), att_ref(att.size());
    attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
    attention_forward_ref<float>(out_ref.data(), att_ref.data(), qkv.data(), s.B, s.T, s.H, s.Hkv,
                                 s.Dh);
    EXPECT_TRUE(close(out, out_ref, 1e-5, "attention_forward out " + s.name()));
    EXPECT_TRUE(close(att, att_ref, 1e-5, "attention_forward att " + s.name()));
    for (int64_t r = 0; r < s.B * s.H * s.T; ++r) {  // each row: a distribution over j <= i
      const int64_t i = r % s.T;
      double sum = 0;
      for (int64_t j = 0; j < s.T; ++j) {
        const float p = att[r * s.T + j];
        if (j > i) {
          ASSERT_EQ(p, 0.0f) << s.name() << " row " << r << " col " << j;
        }
        sum += p;
      }
      ASSERT_NEAR(sum, 1.0, 1e-5) << s.name() << " row " << r;
    }
    auto dqkv = randn(qkv.size(), seed++);  // overwritten, so start from garbage
    std::vector<float> dqkv_ref(qkv.size());
    auto scratch = scratch_for(s.T, s.Dh);
    attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T,
                       s.H, s.Hkv, s.Dh);
    std::vector<float> ref_scratch(std::max<int64_t>(s.T, 1));
    attention_backward_ref<float>(dqkv_ref.data(), dout.data(), qkv.data(), att.data(),
                                  ref_scratch.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
    EXPECT_TRUE(close(dqkv, dqkv_ref, 2e-5, "attention_backward dqkv " + s.name()));
  }
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }
std::vector<float> to_float(const std::vector<double>& x) { return {x.begin(), x.end()}; }

// attention_*_bf16 against the double ref with the same operands rounded to bf16: what is left is
// f32 summation, and the rare bf16 rounding of a probability or dS that lands on the other side
// of a tie because the kernel's f32 softmax (exp_fast) differs from the ref's in the last bits.
// Against the f32 ref the bf16 rounding itself shows, bounded by a few bf16 ulps of the output's
// scale. Measured: up to 2e-4 against the bf16 ref, 7e-3 against the f32 one (of max |ref|).
TEST(Attention, Bf16ProductsMatchTheRefOnBf16Operands) {
  const AttnShape shapes[] = {{1, 1, 1, 1, 8},   {2, 7, 4, 2, 16},   {2, 33, 4, 4, 8},
                              {1, 70, 3, 1, 33}, {2, 130, 4, 2, 64}, {1, 129, 4, 1, 24}};
  uint32_t seed = 101;
  for (const auto& s : shapes) {
    const int64_t C = (s.H + 2 * s.Hkv) * s.Dh;
    const auto qkv = randn(s.B * s.T * C, seed++, 1.5f);
    const auto dout = randn(s.B * s.T * s.H * s.Dh, seed++);
    std::vector<float> out(s.B * s.T * s.H * s.Dh), att(s.B * s.H * s.T * s.T, -1.0f);
    attention_forward_bf16(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
    std::vector<double> out_r(out.size()), att_r(att.size()), out_f(out.size()), att_f(att.size());
    const auto qkv_d = to_double(qkv);
    attention_forward_ref<double>(out_r.data(), att_r.data(), qkv_d.data(), s.B, s.T, s.H, s.Hkv,
                                  s.Dh, /*bf16_products=*/true);
    attention_forward_ref<double>(out_f.data(), att_f.data(), qkv_d.data(), s.B, s.T, s.H, s.Hkv,
                                  s.Dh);
    EXPECT_TRUE(close(att, to_float(att_r), 1e-5, "bf16 att vs bf16 ref " + s.name()));
    EXPECT_TRUE(close(out, to_float(out_r), 1e-3, "bf16 out vs bf16 ref " + s.name()));
    EXPECT_TRUE(close(out, to_float(out_f), 2e-2, "bf16 out vs f32 ref " + s.name()));

    std::vector<float> dqkv(qkv.size(), 7.0f);  // overwritten
    auto scratch = scratch_for(s.T, s.Dh);
    attention_backward_bf16(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B,
                            s.T, s.H, s.Hkv, s.Dh);
    std::vector<double> d_r(qkv.size()), d_f(qkv.size()), sc(std::max<int64_t>(s.T, 1));
    const auto dout_d = to_double(dout), att_d = to_double(att);
    attention_backward_ref<double>(d_r.data(), dout_d.data(), qkv_d.data(), att_d.data(), sc.data(),
                                   s.B, s.T, s.H, s.Hkv, s.Dh, true);
    attention_backward_ref<double>(d_f.data(), dout_d.data(), qkv_d.data(), att_d.data(), sc.data(),
                                   s.B, s.T, s.H, s.Hkv, s.Dh);
    EXPECT_TRUE(close(dqkv, to_float(d_r), 1e-3, "bf16 dqkv vs bf16 ref " + s.name()));
    EXPECT_TRUE(close(dqkv, to_float(d_f), 2e-2, "bf16 dqkv vs f32 ref " + s.name()));
  }
}

TEST(Attention, BackwardIsBitwiseDeterministic) {
  const AttnShape s{2, 200, 4, 2, 32};
  const int64_t C = (s.H + 2 * s.Hkv) * s.Dh;
  const auto qkv = randn(s.B * s.T * C, 7);
  const auto dout = randn(s.B * s.T * s.H * s.Dh, 8);
  std::vector<float> out(s.B * s.T * s.H * s.Dh), att(s.B * s.H * s.T * s.T);
  attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
  std::vector<float> d1(qkv.size()), d2(qkv.size(), 5.0f);
  auto scratch = scratch_for(s.T, s.Dh);
  attention_backward(d1.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T, s.H,
                     s.Hkv, s.Dh);
  std::fill(scratch.begin(), scratch.end(), 3.0f);  // stale scratch must not matter
  attention_backward(d2.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T, s.H,
                     s.Hkv, s.Dh);
  EXPECT_EQ(std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(float)), 0);
  std::vector<float> out2(out.size()), att2(att.size());
  attention_forward(out2.data(), att2.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
  EXPECT_EQ(std::memcmp(out.data(), out2.data(), out.size() * sizeof(float)), 0);
}

// Tasks run whole on one thread, so the thread count does not change a bit.
TEST(Attention, SameBitsForOneAndAllThreads) {
  const AttnShape s{2, 150, 4, 2, 32};
  const int64_t C = (s.H + 2 * s.Hkv) * s.Dh;
  const auto qkv = randn(s.B * s.T * C, 17);
  const auto dout = randn(s.B * s.T * s.H * s.Dh, 18);
  auto run = [&](std::vector<float>& out, std::vector<float>& att, std::vector<float>& dqkv) {
    out.assign(s.B * s.T * s.H * s.Dh, 0.0f);
    att.assign(s.B * s.H * s.T * s.T, 0.0f);
    dqkv.assign(qkv.size(), 0.0f);
    auto scratch = scratch_for(s.T, s.Dh);
    attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.Dh);
    attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), s.B, s.T,
                       s.H, s.Hkv, s.Dh);
  };
  std::vector<float> o1, a1, d1, on, an, dn;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  run(o1, a1, d1);
  omp_set_num_threads(saved);
  run(on, an, dn);
  EXPECT_EQ(std::memcmp(o1.data(), on.data(), o1.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(a1.data(), an.data(), a1.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(d1.data(), dn.data(), d1.size() * sizeof(float)), 0);
}

// gemm_f32_small against gemm_ref in double: only f32 summation error, K 2^-24 of the sum of
// |alpha a b| (plus C's rounding when accumulating). Shapes cross the 6-row tiles, the 64-column
// panels and the masked tail vector; A is read row-major and transposed (a_rs = 1, as dK and dV
// read dS and P); B and C have row strides past N, and C's padding must stay untouched.
TEST(SmallGemm, F32TilesMatchTheRefWithinF32Summation) {
  struct Shape {
    int64_t M, N, K;
  };
  uint32_t seed = 70;
  for (const Shape sh : {Shape{1, 1, 1}, Shape{5, 13, 7}, Shape{37, 70, 33}, Shape{64, 200, 64},
                         Shape{13, 64, 512}, Shape{512, 64, 64}})
    for (bool at : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        const int64_t M = sh.M, N = sh.N, K = sh.K, ldb = N + 3, ldc = N + 5;
        const auto A = randn(M * K, seed++), B = randn(K * ldb, seed++);
        const auto C0 = randn(M * ldc, seed++);
        std::vector<float> As(M * K);  // A as the kernel reads it
        const int64_t a_rs = at ? 1 : K, a_ks = at ? M : 1;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) As[m * a_rs + k * a_ks] = A[m * K + k];
        std::vector<float> C = C0;
        gemm_f32_small(C.data(), ldc, As.data(), a_rs, a_ks, B.data(), ldb, M, N, K, 0.5f, beta);
        const std::string tag = "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K) + (at ? " A^T" : "") +
                                " beta=" + std::to_string(beta);
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < N; ++n) {
            double want = 0, absdot = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double ab = double(A[m * K + k]) * double(B[k * ldb + n]);
              want += ab;
              absdot += std::fabs(ab);
            }
            const double c0 = C0[m * ldc + n];
            want = 0.5 * want + beta * c0;
            const double bound = double(K + 2) * 0x1p-24 * (0.5 * absdot + beta * std::fabs(c0));
            ASSERT_LE(std::fabs(C[m * ldc + n] - want), bound) << tag << " at (" << m << ", " << n
                                                               << ")";
          }
          for (int64_t n = N; n < ldc; ++n)
            ASSERT_EQ(C[m * ldc + n], C0[m * ldc + n]) << tag << " padding (" << m << ", " << n
                                                       << ")";
        }
      }
}

TEST(Attention, RejectsBadHeads) {
  std::vector<float> buf(1024);
  EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), 1, 2, 3, 2, 4), moe::Error);
  try {
    attention_forward(buf.data(), buf.data(), buf.data(), 1, 2, 3, 2, 4);
  } catch (const moe::Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[attention_forward]", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace moe::cpu
