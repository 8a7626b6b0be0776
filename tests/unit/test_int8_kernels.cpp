// INT8 kernels (int8.h) against their scalar twins (int8_ref.h) and against the fp32 linear
// layer with the error bound the quantization steps imply.
//
// Bounds asserted:
//  - fast vs _ref: the integer sums are exact and the fp32 epilogue is the same expression, so
//    max |fast - ref| <= 1e-6 * max |ref| (in practice 0); quantized weights and rows bitwise.
//  - int8 vs fp32 (per element n, o):  |y_int8 - y_fp32| <= 0.5 * scale_w[o] * ||x_n||_1
//      + 0.5 * scale_x[n] * ||scale_w[o] q_o||_1, plus 1e-4 of that bound and 1e-5 * ||x_n||_1 *
//      max|W| for the fp32 sums' own rounding (int8.h derives the bound).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernel_checks.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/int8_ref.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {

using testing::close;
using testing::randn;

struct Quantized {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> sum;
};

Quantized quantize(const std::vector<float>& W, int64_t out, int64_t in) {
  Quantized r{std::vector<int8_t>(size_t(out * in)), std::vector<float>(size_t(out)),
              std::vector<int32_t>(size_t(out))};
  quantize_weight_int8(r.q.data(), r.scale.data(), W.data(), out, in);
  int8_row_sums(r.sum.data(), r.q.data(), out, in);
  return r;
}

// Per-element check of the int8 result against fp32 with the bound of int8.h.
::testing::AssertionResult within_quant_bound(const std::vector<float>& y8,
                                              const std::vector<float>& y32,
                                              const std::vector<float>& x,
                                              const std::vector<float>& W, const Quantized& w,
                                              int64_t N, int64_t in, int64_t out,
                                              const std::string& what) {
  std::vector<uint8_t> xq(size_t(N * in));
  std::vector<float> xs(static_cast<size_t>(N));
  std::vector<int32_t> xz(static_cast<size_t>(N));
  quantize_rows_u8_ref(xq.data(), xs.data(), xz.data(), x.data(), N, in);
  float wmax = 0;
  for (float v : W) wmax = std::max(wmax, std::fabs(v));
  double worst = 0;
  for (int64_t n = 0; n < N; ++n) {
    double x1 = 0;
    for (int64_t i = 0; i < in; ++i) x1 += std::fabs(x[n * in + i]);
    for (int64_t o = 0; o < out; ++o) {
      double w1 = 0;
      for (int64_t i = 0; i < in; ++i) w1 += std::fabs(double(w.scale[o]) * w.q[o * in + i]);
      const double bound =
          (0.5 * w.scale[o] * x1 + 0.5 * xs[n] * w1) * (1 + 1e-4) + 1e-5 * x1 * wmax + 1e-30;
      const double d = std::fabs(double(y8[n * out + o]) - double(y32[n * out + o]));
      worst = std::max(worst, d / bound);
      if (!(d <= bound))
        return ::testing::AssertionFailure()
               << what << ": y[" << n << "," << o << "] int8 " << y8[n * out + o] << " vs fp32 "
               << y32[n * out + o] << ": |diff| " << d << " > bound " << bound;
    }
  }
  return ::testing::AssertionSuccess() << what << ": worst |diff| / bound = " << worst;
}

TEST(Int8Quantize, WeightsMatchRefAndKnownValues) {
  // Row 0: amax 127 -> scale 1, values round half to even; row 1 all zeros; row 2 tiny values.
  const std::vector<float> W = {127.0f, -0.5f,   1.5f, 2.5f, -63.5f, 0.49f,  //
                                0,      0,       0,    0,    0,      0,      //
                                1e-30f, -2e-30f, 0,    0,    0,      0};
  std::vector<int8_t> q(W.size()), q_ref(W.size());
  std::vector<float> s(3), s_ref(3);
  quantize_weight_int8(q.data(), s.data(), W.data(), 3, 6);
  quantize_weight_int8_ref(q_ref.data(), s_ref.data(), W.data(), 3, 6);
  EXPECT_EQ(q, q_ref);
  EXPECT_EQ(s, s_ref);
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_EQ(std::vector<int8_t>(q.begin(), q.begin() + 6),
            (std::vector<int8_t>{127, 0, 2, 2, -64, 0}));
  EXPECT_EQ(s[1], 1.0f) << "a zero row gets scale 1";
  for (int i = 6; i < 12; ++i) EXPECT_EQ(q[i], 0);
  EXPECT_EQ(q[12], 64);  // 1e-30 / (2e-30/127) = 63.5 -> 64 (even)
  EXPECT_EQ(q[13], -127);

  // Random: bitwise equal to the ref, and every element within half a step.
  const int64_t out = 37, in = 129;
  const auto R = randn(size_t(out * in), 3);
  Quantized w = quantize(R, out, in);
  std::vector<int8_t> rq(R.size());
  std::vector<float> rs(out);
  std::vector<int32_t> rsum(out);
  quantize_weight_int8_ref(rq.data(), rs.data(), R.data(), out, in);
  int8_row_sums_ref(rsum.data(), rq.data(), out, in);
  EXPECT_EQ(w.q, rq);
  EXPECT_EQ(w.scale, rs);
  EXPECT_EQ(w.sum, rsum);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      ASSERT_LE(std::fabs(R[o * in + i] - w.scale[o] * w.q[o * in + i]),
                0.5f * w.scale[o] * 1.0001f);
}

TEST(Int8Quantize, RejectsNonFiniteWeights) {
  std::vector<float> W(12, 1.0f);
  W[7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<int8_t> q(12);
  std::vector<float> s(3);
  try {
    quantize_weight_int8(q.data(), s.data(), W.data(), 3, 4);
    FAIL() << "no error for a NaN weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 1"), std::string::npos) << e.what();
  }
}

TEST(Int8Quantize, RowsMatchRefZeroAndNonFinite) {
  const int64_t N = 6, in = 70;
  auto x = randn(size_t(N * in), 11);
  for (int64_t i = 0; i < in; ++i) x[5 * in + i] = i % 3 == 0 ? -0.0f : (i % 3 == 1 ? 0.0f : 1e-3f);
  for (int64_t i = 0; i < in; ++i) x[1 * in + i] = 0.0f;                      // zero row
  for (int64_t i = 0; i < in; ++i) x[2 * in + i] = std::fabs(x[2 * in + i]);  // all >= 0
  x[3 * in + 5] = std::numeric_limits<float>::infinity();
  std::vector<uint8_t> q(N * in), q_ref(N * in);
  std::vector<float> s(N), s_ref(N);
  std::vector<int32_t> z(N), z_ref(N);
  quantize_rows_u8(q.data(), s.data(), z.data(), x.data(), N, in);
  quantize_rows_u8_ref(q_ref.data(), s_ref.data(), z_ref.data(), x.data(), N, in);
  EXPECT_EQ(q, q_ref);
  EXPECT_EQ(z, z_ref);
  for (int64_t n = 0; n < N; ++n)
    EXPECT_TRUE(s[n] == s_ref[n] || (std::isnan(s[n]) && std::isnan(s_ref[n]))) << n;
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_EQ(z[1], 0);
  EXPECT_EQ(z[2], 0) << "a non-negative row has zero point 0";
  EXPECT_TRUE(std::isnan(s[3]));
  for (int64_t n : {0, 2, 4, 5})
    for (int64_t i = 0; i < in; ++i)
      ASSERT_LE(std::fabs(x[n * in + i] - s[n] * float(int(q[n * in + i]) - z[n])),
                0.5f * s[n] * 1.0001f)
          << "row " << n << " col " << i;
}

struct LinearCase {
  int64_t N, in, out;
};

TEST(Int8Linear, MatchesRefAndFp32Bound) {
  // Row counts on both sides of the runtime-M / fixed-M switch (16), odd sizes, in and out
  // not multiples of 4, 16, 64 or 128.
  const LinearCase cases[] = {{1, 1, 1},   {1, 64, 96},    {3, 17, 5},     {7, 130, 70},
                              {16, 33, 9}, {19, 257, 131}, {64, 128, 384}, {300, 200, 45}};
  uint32_t seed = 100;
  for (const auto& c : cases) {
    const std::string what = "N=" + std::to_string(c.N) + " in=" + std::to_string(c.in) +
                             " out=" + std::to_string(c.out);
    auto x = randn(size_t(c.N * c.in), seed++);
    auto W = randn(size_t(c.out * c.in), seed++, 0.05f);
    if (c.out > 2)
      for (int64_t i = 0; i < c.in; ++i) W[1 * c.in + i] = 0.0f;  // a zero weight row
    if (c.N > 2)
      for (int64_t i = 0; i < c.in; ++i) x[2 * c.in + i] = 0.0f;  // a zero token
    const Quantized w = quantize(W, c.out, c.in);
    std::vector<float> y(size_t(c.N * c.out), NAN), y_ref(y.size()), y32(y.size());
    std::vector<uint8_t> xq(size_t(c.N * c.in));
    std::vector<float> xs(size_t(c.N));
    std::vector<int32_t> xz(size_t(c.N));
    linear_forward_int8(y.data(), x.data(), w.q.data(), w.scale.data(), w.sum.data(), c.N, c.in,
                        c.out);
    linear_forward_int8_ref(y_ref.data(), x.data(), w.q.data(), w.scale.data(), c.N, c.in, c.out,
                            xq.data(), xs.data(), xz.data());
    EXPECT_TRUE(close(y, y_ref, 1e-6, "int8 vs ref " + what));
    linear_forward(y32.data(), x.data(), W.data(), c.N, c.in, c.out);
    EXPECT_TRUE(within_quant_bound(y, y32, x, W, w, c.N, c.in, c.out, what));
    // w_sum = null computes the row sums itself: same bits.
    std::vector<float> y2(y.size(), NAN);
    linear_forward_int8(y2.data(), x.data(), w.q.data(), w.scale.data(), nullptr, c.N, c.in, c.out);
    EXPECT_TRUE(testing::bitwise_equal(y2, y)) << what;
    if (c.out > 2) {
      for (int64_t n = 0; n < c.N; ++n) EXPECT_EQ(y[n * c.out + 1], 0.0f) << what;
    }
    if (c.N > 2) {
      for (int64_t o = 0; o < c.out; ++o) EXPECT_EQ(y[2 * c.out + o], 0.0f) << what;
    }
  }
}

TEST(Int8Linear, NonFiniteInputRowGivesNaNRowOnly) {
  const int64_t N = 3, in = 40, out = 24;
  auto x = randn(size_t(N * in), 5);
  x[1 * in + 3] = std::numeric_limits<float>::quiet_NaN();
  const auto W = randn(size_t(out * in), 6);
  const Quantized w = quantize(W, out, in);
  std::vector<float> y(N * out);
  linear_forward_int8(y.data(), x.data(), w.q.data(), w.scale.data(), w.sum.data(), N, in, out);
  for (int64_t o = 0; o < out; ++o) {
    EXPECT_TRUE(std::isfinite(y[o]));
    EXPECT_TRUE(std::isnan(y[out + o]));
    EXPECT_TRUE(std::isfinite(y[2 * out + o]));
  }
}

TEST(Int8Linear, EmptySizesAndBadSizes) {
  std::vector<float> y(6, 7.0f), x(6, 1.0f), s(6, 1.0f);
  std::vector<int8_t> q(6, 1);
  linear_forward_int8(y.data(), x.data(), q.data(), s.data(), nullptr, 0, 3, 2);  // N = 0
  EXPECT_EQ(y[0], 7.0f);
  linear_forward_int8(y.data(), x.data(), q.data(), s.data(), nullptr, 3, 0, 2);  // in = 0
  for (int i = 0; i < 6; ++i) EXPECT_EQ(y[i], 0.0f);
  EXPECT_THROW(linear_forward_int8(y.data(), x.data(), q.data(), s.data(), nullptr, -1, 3, 2),
               Error);
  EXPECT_THROW(
      linear_forward_int8(y.data(), x.data(), q.data(), s.data(), nullptr, 1, int64_t(1) << 20, 2),
      Error);
}

TEST(Int8Linear, UsesAJitImplementationNotRef) {
  for (int64_t M : {int64_t(1), int64_t(256)}) {
    const std::string impl = int8_matmul_impl(M, 128, 384);
    EXPECT_EQ(impl.find("ref"), std::string::npos) << "M=" << M << ": " << impl;
    EXPECT_TRUE(impl.find("jit") != std::string::npos || impl.find("brg") != std::string::npos)
        << "M=" << M << ": " << impl;
  }
}

struct GroupedInt8Case {
  int64_t in, out;
  std::vector<int64_t> sizes;
};

TEST(Int8GroupedLinear, MatchesRefAndFp32WithEmptyGroups) {
  // Groups of 0 rows, of 1, of exactly 256 (a full fixed-M task), and of 300 (a full task plus
  // a tail); in/out odd.
  const GroupedInt8Case cases[] = {{24, 40, {0, 5, 0, 17, 1, 33}},
                                   {24, 40, {0, 0, 0}},
                                   {65, 130, {256, 0, 300, 1}},
                                   {128, 64, {1, 1}}};
  uint32_t seed = 200;
  for (const auto& c : cases) {
    const int64_t E = int64_t(c.sizes.size());
    std::vector<int64_t> offsets(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + c.sizes[e];
    const int64_t N = offsets[E];
    // Each expert's weight sits in a block with padding after it (w_stride > out*in), and its
    // scales likewise (s_stride > out), as in the model's expert region.
    const int64_t w_stride = c.out * c.in + 7, s_stride = c.out + 3;
    const auto x = randn(size_t(N * c.in), seed++);
    std::vector<float> W = randn(size_t(E * w_stride), seed++, 0.05f);
    std::vector<int8_t> q(size_t(E * w_stride), 0);
    std::vector<float> scale(size_t(E * s_stride), NAN);
    std::vector<int32_t> sum(size_t(E * s_stride), 0);
    for (int64_t e = 0; e < E; ++e) {
      quantize_weight_int8(q.data() + e * w_stride, scale.data() + e * s_stride,
                           W.data() + e * w_stride, c.out, c.in);
      int8_row_sums(sum.data() + e * s_stride, q.data() + e * w_stride, c.out, c.in);
    }
    std::vector<float> y(size_t(N * c.out), NAN), y_ref(y.size()), y_null(y.size(), NAN);
    std::vector<uint8_t> xq(size_t(N * c.in));
    std::vector<float> xs(static_cast<size_t>(N));
    std::vector<int32_t> xz(static_cast<size_t>(N));
    grouped_linear_forward_int8(y.data(), x.data(), q.data(), w_stride, scale.data(), sum.data(),
                                s_stride, offsets.data(), E, c.in, c.out);
    grouped_linear_forward_int8_ref(y_ref.data(), x.data(), q.data(), w_stride, scale.data(),
                                    s_stride, offsets.data(), E, c.in, c.out, xq.data(), xs.data(),
                                    xz.data());
    const std::string what = "E=" + std::to_string(E) + " N=" + std::to_string(N);
    EXPECT_TRUE(close(y, y_ref, 1e-6, "grouped int8 vs ref " + what));
    grouped_linear_forward_int8(y_null.data(), x.data(), q.data(), w_stride, scale.data(), nullptr,
                                s_stride, offsets.data(), E, c.in, c.out);
    EXPECT_TRUE(testing::bitwise_equal(y_null, y)) << what;
    std::vector<float> y32(y.size());
    grouped_linear_forward(y32.data(), x.data(), W.data(), w_stride, offsets.data(), E, c.in,
                           c.out);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
      if (n == 0) continue;
      Quantized w{
          std::vector<int8_t>(q.begin() + e * w_stride, q.begin() + e * w_stride + c.out * c.in),
          std::vector<float>(scale.begin() + e * s_stride, scale.begin() + e * s_stride + c.out),
          {}};
      EXPECT_TRUE(within_quant_bound(
          std::vector<float>(y.begin() + r0 * c.out, y.begin() + (r0 + n) * c.out),
          std::vector<float>(y32.begin() + r0 * c.out, y32.begin() + (r0 + n) * c.out),
          std::vector<float>(x.begin() + r0 * c.in, x.begin() + (r0 + n) * c.in),
          std::vector<float>(W.begin() + e * w_stride, W.begin() + e * w_stride + c.out * c.in), w,
          n, c.in, c.out, what + " expert " + std::to_string(e)));
    }
  }
}

TEST(Int8GroupedLinear, SameBitsForOneAndAllThreads) {
  const int64_t E = 3, in = 96, out = 80, w_stride = in * out;
  const std::vector<int64_t> offsets = {0, 700, 700, 1000};
  const auto x = randn(size_t(1000 * in), 31);
  const auto W = randn(size_t(E * w_stride), 32, 0.05f);
  std::vector<int8_t> q(W.size());
  std::vector<float> scale(size_t(E * out));
  for (int64_t e = 0; e < E; ++e)
    quantize_weight_int8(q.data() + e * w_stride, scale.data() + e * out, W.data() + e * w_stride,
                         out, in);
  std::vector<float> y1(size_t(1000 * out)), yn(y1.size());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  grouped_linear_forward_int8(y1.data(), x.data(), q.data(), w_stride, scale.data(), nullptr, out,
                              offsets.data(), E, in, out);
  omp_set_num_threads(threads);
  grouped_linear_forward_int8(yn.data(), x.data(), q.data(), w_stride, scale.data(), nullptr, out,
                              offsets.data(), E, in, out);
  EXPECT_TRUE(testing::bitwise_equal(y1, yn));
}

TEST(Int8GroupedLinear, RejectsBadOffsets) {
  std::vector<float> y(8), x(8), s(4, 1.0f);
  std::vector<int8_t> q(8, 1);
  const std::vector<int64_t> bad_first = {1, 2}, decreasing = {0, 2, 1};
  EXPECT_THROW(grouped_linear_forward_int8(y.data(), x.data(), q.data(), 4, s.data(), nullptr, 2,
                                           bad_first.data(), 1, 2, 2),
               Error);
  EXPECT_THROW(grouped_linear_forward_int8(y.data(), x.data(), q.data(), 4, s.data(), nullptr, 2,
                                           decreasing.data(), 2, 2, 2),
               Error);
}

}  // namespace
}  // namespace moe::cpu
