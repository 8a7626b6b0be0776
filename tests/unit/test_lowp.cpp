// Low-precision kernels (kernels.h bf16 GEMMs, quantize.h) against their f32 / scalar twins,
// with the bound each one must meet stated and asserted.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "kernel_checks.h"
#include "kernels/cpu/bf16_pairs.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/ref.h"

namespace moe::cpu {
namespace {

using testing::randn;

std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> y(x.size());
  cast_bf16(y.data(), x.data(), int64_t(x.size()));
  return y;
}
std::vector<float> widened(const std::vector<bf16>& x) {
  std::vector<float> y(x.size());
  widen_bf16(y.data(), x.data(), int64_t(x.size()));
  return y;
}

// |fast - ref| <= tol * sum_k |a_k b_k| for every element: the bound of an f32 (tol ~ K * 2^-24)
// or bf16-input (tol ~ 2 * 2^-8 more) dot product, scaled by the magnitudes it sums.
::testing::AssertionResult within_dot_bound(const std::vector<float>& fast,
                                            const std::vector<double>& ref,
                                            const std::vector<double>& absdot, double tol,
                                            const std::string& what) {
  for (size_t i = 0; i < fast.size(); ++i) {
    const double bound = tol * absdot[i] + 1e-30;
    if (!(std::fabs(double(fast[i]) - ref[i]) <= bound))
      return ::testing::AssertionFailure()
             << what << ": element " << i << " fast " << fast[i] << " ref " << ref[i]
             << " differs by " << std::fabs(double(fast[i]) - ref[i]) << " > bound " << bound;
  }
  return ::testing::AssertionSuccess();
}

// C = op(A) op(B) in double, and sum_k |a_ik b_kj|.
void dot_ref(std::vector<double>& C, std::vector<double>& absC, const std::vector<float>& A,
             const std::vector<float>& B, int64_t M, int64_t N, int64_t K, bool ta, bool tb) {
  C.assign(size_t(M * N), 0.0);
  absC.assign(size_t(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * M + i] : A[i * K + k], b = tb ? B[j * K + k] : B[k * N + j];
        C[i * N + j] += a * b;
        absC[i * N + j] += std::fabs(a * b);
      }
}

TEST(Bf16Cast, MatchesCoreScalarConversionBitwise) {
  std::vector<float> x = randn(4099, 1, 3.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            1.00390625f /* tie, even */,
                            1.01171875f /* tie, odd */,
                            3.4e38f,
                            -3.4e38f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            1e-40f /* subnormal */};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  const std::vector<bf16> y = to_bf16(x);
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(y[i]))) << i;
      continue;
    }
    ASSERT_EQ(y[i], f32_to_bf16(x[i])) << "x = " << x[i];
  }
  const std::vector<float> back = widened(y);
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isnan(x[i])) {
      EXPECT_EQ(back[i], bf16_to_f32(y[i]));
    }
  }
}

TEST(Bf16Gemm, AllTransposesMatchRefWithinTheF32AndBf16Bounds) {
  const int64_t M = 37, N = 70, K = 300;
  uint32_t seed = 10;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        const auto A = randn(M * K, seed++), B = randn(K * N, seed++);
        const auto C0 = randn(M * N, seed++);
        const auto Ah = to_bf16(A), Bh = to_bf16(B);
        std::vector<float> C = C0;
        gemm(C.data(), Ah.data(), Bh.data(), M, N, K, ta, tb, 0.5f, beta);
        const std::string tag = std::string("ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0") +
                                " beta=" + std::to_string(beta);
        // 1. Against the exact product of the bf16 values: only f32 accumulation error.
        std::vector<double> ref, absdot;
        dot_ref(ref, absdot, widened(Ah), widened(Bh), M, N, K, ta, tb);
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = 0.5 * ref[i] + beta * C0[i];
        for (size_t i = 0; i < ref.size(); ++i)
          absdot[i] = 0.5 * absdot[i] + beta * std::fabs(C0[i]);
        EXPECT_TRUE(within_dot_bound(C, ref, absdot, double(K) * 0x1p-24, "bf16 values " + tag));
        // 2. Against the f32 inputs: each input rounded by at most 2^-9 relative.
        dot_ref(ref, absdot, A, B, M, N, K, ta, tb);
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = 0.5 * ref[i] + beta * C0[i];
        for (size_t i = 0; i < ref.size(); ++i)
          absdot[i] = 0.5 * absdot[i] + beta * std::fabs(C0[i]);
        EXPECT_TRUE(within_dot_bound(C, ref, absdot, 2 * 0x1p-9 + double(K) * 0x1p-24,
                                     "f32 inputs " + tag));
      }
}

// The packers are casts to bf16 moved into pairs: bit for bit core/dtype.h's f32_to_bf16, odd
// sizes padded with zero halves.
TEST(Bf16Pairs, PackersPlaceEachRoundedValueInItsPair) {
  const int64_t rows = 7, cols = 9, ld = 11;  // odd both ways, src with a row stride
  const auto X = randn(rows * ld, 40);
  const auto at = [&](int64_t r, int64_t c) { return f32_to_bf16(X[r * ld + c]); };
  const auto half = [](bf16x2 p, int k) { return bf16(k ? p >> 16 : p & 0xFFFFu); };
  std::vector<bf16x2> a(rows * 5, 1u), t(5 * rows, 1u), c(4 * cols, 1u);
  pack_pairs_in_rows(a.data(), 5, X.data(), ld, rows, cols);
  pack_pairs_in_rows_t(t.data(), rows, X.data(), ld, rows, cols);
  pack_pairs_in_cols(c.data(), cols, X.data(), ld, rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < 10; ++k) {  // k = cols is the padded half
      const bf16 want = k < cols ? at(r, k) : bf16(0);
      ASSERT_EQ(half(a[r * 5 + k / 2], k % 2), want) << "in_rows r " << r << " k " << k;
      ASSERT_EQ(half(t[(k / 2) * rows + r], k % 2), want) << "in_rows_t r " << r << " k " << k;
    }
  for (int64_t k = 0; k < 8; ++k)  // k = rows is the padded half
    for (int64_t col = 0; col < cols; ++col) {
      const bf16 want = k < rows ? at(k, col) : bf16(0);
      ASSERT_EQ(half(c[(k / 2) * cols + col], k % 2), want) << "in_cols k " << k << " c " << col;
    }
}

// The register-tiled product against gemm_bf16_pairs_ref in double on the same pairs: only f32
// summation error (K 2^-24 of sum |ab|). Shapes cross the 6-row and 64-column tiles and the
// masked tail vector; A is read both row-major and transposed (a_rs = 1), as attention does.
TEST(Bf16Pairs, ProductMatchesTheRefWithinF32Summation) {
  struct Shape {
    int64_t M, N, K;
  };
  uint32_t seed = 50;
  for (const Shape sh :
       {Shape{1, 1, 1}, Shape{5, 13, 7}, Shape{37, 70, 33}, Shape{64, 200, 64}, Shape{13, 64, 512}})
    for (bool at : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        const int64_t M = sh.M, N = sh.N, K = sh.K, Kp = (K + 1) / 2;
        const auto A = randn(M * K, seed++), B = randn(K * N, seed++), C0 = randn(M * N, seed++);
        std::vector<bf16x2> Ap(M * Kp), Bp(Kp * N);
        if (at) {  // A^T given (K, M) row-major: pairs down its columns
          std::vector<float> AT(K * M);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) AT[k * M + m] = A[m * K + k];
          pack_pairs_in_cols(Ap.data(), M, AT.data(), M, K, M);
        } else {
          pack_pairs_in_rows(Ap.data(), Kp, A.data(), K, M, K);
        }
        pack_pairs_in_cols(Bp.data(), N, B.data(), N, K, N);
        const int64_t a_rs = at ? 1 : Kp, a_ks = at ? M : 1;
        std::vector<float> C = C0;
        gemm_bf16_pairs(C.data(), N, Ap.data(), a_rs, a_ks, Bp.data(), N, M, N, Kp, 0.5f, beta);
        std::vector<double> ref(C0.begin(), C0.end()), absdot(M * N);
        gemm_bf16_pairs_ref<double>(ref.data(), N, Ap.data(), a_rs, a_ks, Bp.data(), N, M, N, Kp,
                                    0.5, beta);
        const auto Aw = widened(to_bf16(A)), Bw = widened(to_bf16(B));
        std::vector<double> unused;
        dot_ref(unused, absdot, Aw, Bw, M, N, K, false, false);
        for (int64_t i = 0; i < M * N; ++i) absdot[i] = 0.5 * absdot[i] + beta * std::fabs(C0[i]);
        const std::string tag = "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K) + (at ? " A^T" : "") +
                                " beta=" + std::to_string(beta);
        EXPECT_TRUE(within_dot_bound(C, ref, absdot, double(K) * 0x1p-24, tag));
        // And the pairs hold the product of the bf16 values: the ref equals dot_ref's exact sum.
        std::vector<double> exact;
        dot_ref(exact, unused, Aw, Bw, M, N, K, false, false);
        for (int64_t i = 0; i < M * N; ++i)
          ASSERT_NEAR(ref[i], 0.5 * exact[i] + beta * C0[i], 1e-12 * (1 + absdot[i])) << tag;
      }
}

TEST(Bf16Gemm, GroupedKernelsMatchTheF32KernelsOnTheSameBf16Values) {
  // Groups as the experts' rows: empty ones, one over the 256-row task size.
  const int64_t in = 72, out = 300;
  const std::vector<int64_t> sizes{0, 5, 300, 0, 17};
  const int64_t E = int64_t(sizes.size()), w_stride = in * out + 4;
  std::vector<int64_t> off(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + sizes[e];
  const int64_t Nr = off[E];
  const auto xh = to_bf16(randn(Nr * in, 1)), Wh = to_bf16(randn(E * w_stride, 2));
  const auto dyh = to_bf16(randn(Nr * out, 3));
  const auto x = widened(xh), W = widened(Wh), dy = widened(dyh);
  // The f32 kernels on the widened values compute the same products; sums may be ordered
  // differently: relative 1e-5 of the largest output.
  std::vector<float> y(Nr * out), y32(Nr * out);
  grouped_linear_forward(y.data(), xh.data(), Wh.data(), w_stride, off.data(), E, in, out);
  grouped_linear_forward(y32.data(), x.data(), W.data(), w_stride, off.data(), E, in, out);
  EXPECT_TRUE(testing::close(y, y32, 1e-5, "grouped forward bf16"));
  std::vector<float> dx(Nr * in), dx32(Nr * in);
  grouped_linear_backward_x(dx.data(), dyh.data(), Wh.data(), w_stride, off.data(), E, in, out);
  grouped_linear_backward_x(dx32.data(), dy.data(), W.data(), w_stride, off.data(), E, in, out);
  EXPECT_TRUE(testing::close(dx, dx32, 1e-5, "grouped backward_x bf16"));
  auto dW = randn(E * w_stride, 4), dW32 = dW;  // accumulated onto
  grouped_linear_backward_w(dW.data(), w_stride, dyh.data(), xh.data(), off.data(), E, in, out);
  grouped_linear_backward_w(dW32.data(), w_stride, dy.data(), x.data(), off.data(), E, in, out);
  EXPECT_TRUE(testing::close(dW, dW32, 1e-5, "grouped backward_w bf16"));
  // linear_* (one group, accumulate flag) the same way.
  std::vector<float> ly(Nr * out), ly32(Nr * out);
  linear_forward(ly.data(), xh.data(), Wh.data(), Nr, in, out);
  linear_forward(ly32.data(), x.data(), W.data(), Nr, in, out);
  EXPECT_TRUE(testing::close(ly, ly32, 1e-5, "linear_forward bf16"));
  auto ldx = randn(Nr * in, 5), ldx32 = ldx;
  linear_backward_x(ldx.data(), dyh.data(), Wh.data(), Nr, in, out, true);
  linear_backward_x(ldx32.data(), dy.data(), W.data(), Nr, in, out, true);
  EXPECT_TRUE(testing::close(ldx, ldx32, 1e-5, "linear_backward_x bf16 accumulate"));
}

TEST(Fp8, E4m3RoundingMatchesCoreEncodeDecode) {
  // Every E4M3 value, the midpoints between neighbours (ties go to even), just above and below
  // them, saturation, subnormals and NaN, against core/dtype.h (itself checked against a table
  // of known values in test_core.cpp).
  std::vector<float> probes;
  for (int c = 0; c < 256; ++c) {
    const float v = fp8e4m3_to_f32(uint8_t(c));
    if (std::isnan(v)) continue;
    probes.push_back(v);
    const float next = fp8e4m3_to_f32(uint8_t(c + 1 < 256 ? c + 1 : c));
    if (!std::isnan(next) && (c & 0x7F) < 0x7E) {
      const float mid = 0.5f * (v + next);
      probes.insert(probes.end(), {mid, std::nextafter(mid, 1e9f), std::nextafter(mid, -1e9f)});
    }
  }
  probes.insert(probes.end(), {448.0f, 460.0f, 470.0f, 1e6f, -1e6f, 1e-7f, -3e-3f, 0x1p-10f,
                               std::numeric_limits<float>::infinity()});
  for (float v : probes) ASSERT_EQ(round_e4m3(v), fp8e4m3_to_f32(f32_to_fp8e4m3(v))) << "v = " << v;
  EXPECT_TRUE(std::isnan(round_e4m3(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_e4m3(0x1p-10f), 0.0f);       // half the smallest subnormal: ties to even 0
  EXPECT_EQ(round_e4m3(0x1.8p-10f), 0x1p-9f);  // above half: the smallest subnormal
}

TEST(Fp8, TileScaleIsThePowerOfTwoThatFitsTheTileInto448) {
  for (float amax : {1e-20f, 0.003f, 1.0f, 447.0f, 448.0f, 449.0f, 896.0f, 3e5f}) {
    const float s = fp8_tile_scale(amax);
    int e = 0;
    EXPECT_EQ(std::frexp(s, &e), 0.5f) << "not a power of two: " << s;
    EXPECT_LE(amax / s, 448.0f) << amax;
    EXPECT_GT(amax / s, 224.0f) << amax;  // the next smaller power would also fit otherwise
  }
  EXPECT_EQ(fp8_tile_scale(0.0f), 1.0f);
}

TEST(Fp8, QuantizeRowsColsAndBlocksMatchTheScalarRef) {
  // Sizes that are not multiples of 128 (tail tiles), rows of very different magnitudes (each
  // tile has its own scale), groups of rows for the column tiles.
  const int64_t rows = 300, cols = 200;
  std::vector<float> x = randn(rows * cols, 7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) x[r * cols + c] *= std::ldexp(1.0f, int((r + c) % 17) - 8);
  const std::vector<int64_t> off{0, 0, 130, 131, 300};
  std::vector<bf16> y(x.size());
  std::vector<float> ref(x.size());
  auto check = [&](const char* what) {
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(bf16_to_f32(y[i]), ref[i]) << what << " element " << i << " x " << x[i];
  };
  fp8_quantize_rows(y.data(), x.data(), rows, cols);
  fp8_quantize_tiles_ref(ref.data(), x.data(), rows, cols, 1, 128);
  check("rows (1 x 128)");
  fp8_quantize_cols(y.data(), x.data(), rows, cols, off.data(), int64_t(off.size()) - 1);
  fp8_quantize_tiles_ref(ref.data(), x.data(), rows, cols, 128, 1, off.data(),
                         int64_t(off.size()) - 1);
  check("cols (128 x 1, grouped)");
  fp8_quantize_blocks(y.data(), x.data(), rows, cols);
  fp8_quantize_tiles_ref(ref.data(), x.data(), rows, cols, 128, 128);
  check("blocks (128 x 128)");
}

TEST(Fp8, QuantizationErrorIsWithinHalfAnE4m3UlpOfItsTile) {
  // |x - q(x)| <= max(|x| 2^-4, s 2^-10): half a unit in the last place of a 3-bit mantissa for
  // normals, half the subnormal spacing 2^-9 (times the tile's scale s) below 2^-6 s.
  const int64_t rows = 64, cols = 1000;
  const std::vector<float> x = randn(rows * cols, 8, 5.0f);
  std::vector<bf16> y(x.size());
  fp8_quantize_rows(y.data(), x.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += kFp8Tile) {
      float amax = 0;
      for (int64_t c = c0; c < std::min(cols, c0 + kFp8Tile); ++c)
        amax = std::max(amax, std::fabs(x[r * cols + c]));
      const double s = fp8_tile_scale(amax);
      for (int64_t c = c0; c < std::min(cols, c0 + kFp8Tile); ++c) {
        const double v = x[r * cols + c], q = bf16_to_f32(y[r * cols + c]);
        ASSERT_LE(std::fabs(v - q), std::max(std::fabs(v) * 0x1p-4, s * 0x1p-10))
            << "row " << r << " col " << c;
      }
    }
}

TEST(Fp8, NonFiniteValuesPoisonOnlyTheirTile) {
  std::vector<float> x = randn(2 * 256, 9);
  x[3] = std::numeric_limits<float>::quiet_NaN();         // row 0, tile 0
  x[256 + 200] = std::numeric_limits<float>::infinity();  // row 1, tile 1
  std::vector<bf16> y(x.size());
  fp8_quantize_rows(y.data(), x.data(), 2, 256);
  for (int64_t i = 0; i < 512; ++i) {
    const bool poisoned = i < 128 || (i >= 256 + 128);
    EXPECT_EQ(std::isnan(bf16_to_f32(y[size_t(i)])), poisoned) << i;
  }
}

}  // namespace
}  // namespace moe::cpu
