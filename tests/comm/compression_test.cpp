// The wire formats of compressed collectives (src/comm/compression.h), in one process: sizes,
// the per-value error bounds the header states, exact round trips of representable values,
// and error feedback's residual.
#include "comm/compression.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace moe::comm;

namespace {

std::vector<float> round_trip(Wire w, const std::vector<float>& x, float* residual = nullptr) {
  std::vector<unsigned char> enc(wire_bytes(w, x.size()));
  wire_encode(w, x.data(), x.size(), enc.data(), residual);
  std::vector<float> y(x.size());
  wire_decode(w, enc.data(), x.size(), y.data());
  return y;
}

float block_amax(const std::vector<float>& x, size_t i) {
  const size_t b0 = i / kWireBlock * kWireBlock, b1 = std::min(x.size(), b0 + kWireBlock);
  float a = 0;
  for (size_t k = b0; k < b1; ++k) a = std::max(a, std::fabs(x[k]));
  return a;
}

}  // namespace

TEST(WireFormats, BytesPerValue) {
  EXPECT_EQ(wire_bytes(Wire::kAsIs, 1000), 4000u);
  EXPECT_EQ(wire_bytes(Wire::kBF16, 1000), 2000u);
  EXPECT_EQ(wire_bytes(Wire::kFP8, 1000), 1000u + 4 * 8);  // 8 blocks of 128 (the last short)
  EXPECT_EQ(wire_bytes(Wire::kInt8, 128), 128u + 4);
  EXPECT_EQ(wire_bytes(Wire::kInt8, 0), 0u);
  EXPECT_EQ(parse_wire("fp8"), Wire::kFP8);
  EXPECT_EQ(parse_wire("fp32"), Wire::kAsIs);
  try {
    parse_wire("int4", "[parallel] grad_comm_dtype");
    FAIL() << "int4 parsed";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("[parallel] grad_comm_dtype = \"int4\""), std::string::npos)
        << e.what();
  }
}

// Every error within the stated bound, over values spanning 12 orders of magnitude, blocks
// with one outlier, zeros, and a short last block; and the bound is not loose by orders of
// magnitude (the worst case reaches at least a third of it).
TEST(WireFormats, ErrorWithinTheStatedBound) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> x(128 * 40 + 57);
  for (size_t i = 0; i < x.size(); ++i) {
    const int block = int(i / 128);
    x[i] = g(rng) * std::pow(10.0f, float(block % 13 - 6));
    if (block % 5 == 1 && i % 128 == 3) x[i] *= 1000;  // an outlier sets the block's scale
    if (block % 7 == 2) x[i] = 0;
  }
  for (Wire w : {Wire::kBF16, Wire::kFP8, Wire::kInt8}) {
    const std::vector<float> y = round_trip(w, x);
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double bound = wire_error_bound(w, x[i], block_amax(x, i));
      const double err = std::fabs(double(y[i]) - x[i]);
      ASSERT_LE(err, bound * (1 + 1e-4)) << wire_name(w) << " at " << i << ": " << x[i] << " -> " << y[i];
      if (bound > 0) worst = std::max(worst, err / bound);
    }
    EXPECT_GT(worst, 0.33) << wire_name(w) << ": the bound is far looser than the format";
    std::printf("%s: worst error / bound %.3f\n", wire_name(w), worst);
  }
}

// A block whose largest magnitude is 448 has scale 1, so every E4M3 value (and every integer
// of int8 with amax 127) comes back exactly: the encoder rounds representable values to
// themselves.
TEST(WireFormats, RepresentableValuesComeBackExactly) {
  std::vector<float> x{448.0f};
  for (int e = -9; e <= 8; ++e)
    for (int m = 0; m < 8; ++m) {
      const float v = e == -9 ? 0 : (e < -6 ? std::ldexp(float(m), -9) : std::ldexp(1 + m / 8.0f, e));
      if (std::fabs(v) <= 448) x.push_back(v), x.push_back(-v);
    }
  for (size_t i = 1; i < x.size(); i += 127) {
    std::vector<float> blk{448.0f};
    for (size_t k = i; k < std::min(x.size(), i + 127); ++k) blk.push_back(x[k]);
    EXPECT_EQ(round_trip(Wire::kFP8, blk), blk);
  }
  std::vector<float> ints;
  for (int q = -127; q <= 127; ++q) ints.push_back(float(q));
  std::vector<float> first(ints.begin(), ints.begin() + 128), rest(ints.begin() + 128, ints.end());
  rest.push_back(127);
  EXPECT_EQ(round_trip(Wire::kInt8, first), first);
  EXPECT_EQ(round_trip(Wire::kInt8, rest), rest);
}

// With a residual, encode sends x + r and keeps exactly what that lost.
TEST(WireFormats, ErrorFeedbackKeepsWhatRoundingLost) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0, 1);
  for (Wire w : {Wire::kBF16, Wire::kFP8, Wire::kInt8}) {
    std::vector<float> x(300), r(300), r0(300);
    for (auto& v : x) v = g(rng);
    for (auto& v : r) v = 0.01f * g(rng);
    r0 = r;
    const std::vector<float> y = round_trip(w, x, r.data());
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(double(x[i]) + r0[i] - y[i], r[i], 1e-6) << wire_name(w) << " at " << i;
  }
}
