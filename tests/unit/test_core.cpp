// Core: dtype conversions against independent references, arenas and views.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace moe {
namespace {

float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Random floats over the whole exponent range (uniform bit patterns), finite ones only.
template <class F>
void for_random_floats(int n, F&& f) {
  for (int i = 0; i < n; ++i) {
    const uint32_t u = uint32_t(uniform01(7, 1, uint64_t(i)) * 4294967296.0);
    const float x = from_bits(u);
    if (std::isfinite(x)) f(x);
  }
}

TEST(Dtype, NamesSizesAndParsing) {
  EXPECT_EQ(dtype_size(Dtype::kBF16), 2u);
  EXPECT_EQ(dtype_size(Dtype::kFP8E4M3), 1u);
  EXPECT_EQ(dtype_size(Dtype::kI64), 8u);
  EXPECT_EQ(parse_dtype("bf16"), Dtype::kBF16);
  EXPECT_EQ(parse_dtype("F8_E5M2"), Dtype::kFP8E5M2);
  try {
    parse_dtype("f128");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f128"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

// f16 against the compiler's _Float16 (an independent implementation of IEEE rounding).
TEST(Dtype, F16MatchesCompilerFloat16) {
  int checked = 0;
  for_random_floats(200000, [&](float x) {
    const _Float16 h = static_cast<_Float16>(x);
    uint16_t ref;
    std::memcpy(&ref, &h, 2);
    ASSERT_EQ(f32_to_f16(x), ref) << "x = " << x;
    ASSERT_EQ(f16_to_f32(ref), static_cast<float>(h)) << "code " << ref;
    ++checked;
  });
  EXPECT_GT(checked, 190000);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // halfway past the max rounds to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
}

// bf16: the nearest representable value, ties to the even mantissa.
TEST(Dtype, Bf16RoundsToNearestEven) {
  for_random_floats(200000, [&](float x) {
    const uint16_t h = f32_to_bf16(x);
    const double got = bf16_to_f32(h);
    if (std::isinf(got)) {  // past the midpoint between the largest bf16 and 2^128
      ASSERT_GE(std::fabs(double(x)), 0.5 * (double(bf16_to_f32(0x7F7F)) + std::ldexp(1.0, 128)));
      return;
    }
    const double lo = bf16_to_f32(uint16_t(h - 1)), hi = bf16_to_f32(uint16_t(h + 1));
    const double err = std::fabs(got - double(x));
    if (std::isfinite(lo) && std::signbit(lo) == std::signbit(got)) {
      ASSERT_LE(err, std::fabs(lo - double(x))) << x;
    }
    if (std::isfinite(hi) && std::signbit(hi) == std::signbit(got)) {
      ASSERT_LE(err, std::fabs(hi - double(x))) << x;
    }
  });
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
}

struct Fp8Case {
  const char* name;
  uint8_t (*enc)(float);
  float (*dec)(uint8_t);
  float max;
  int mbits;
};

class Fp8 : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(Fp8, EveryCodeDecodesAndRoundTrips) {
  const Fp8Case c = GetParam();
  int finite = 0;
  for (int code = 0; code < 256; ++code) {
    const float v = c.dec(uint8_t(code));
    if (std::isnan(v)) continue;
    if (std::isinf(v)) continue;
    ++finite;
    if (v == 0 && code != 0) {  // -0 keeps its sign bit
      EXPECT_EQ(c.enc(v), code);
      continue;
    }
    EXPECT_EQ(c.enc(v), code) << c.name << " value " << v;
  }
  EXPECT_GE(finite, 240);
  EXPECT_EQ(c.dec(c.enc(c.max)), c.max);
  EXPECT_EQ(c.dec(c.enc(1e30f)), c.max);    // saturates
  EXPECT_EQ(c.dec(c.enc(-1e30f)), -c.max);
  EXPECT_EQ(c.dec(c.enc(INFINITY)), c.max);
  EXPECT_TRUE(std::isnan(c.dec(c.enc(NAN))));
}

// Between two neighbouring codes the nearest wins; exact midpoints go to the even code.
TEST_P(Fp8, RoundsToNearestEven) {
  const Fp8Case c = GetParam();
  for (int code = 0; code < 0x7F; ++code) {
    const float a = c.dec(uint8_t(code)), b = c.dec(uint8_t(code + 1));
    if (!std::isfinite(a) || !std::isfinite(b)) continue;
    const float mid = 0.5f * (a + b);  // exact in f32: fp8 has few mantissa bits
    EXPECT_EQ(c.enc(mid), (code % 2 == 0) ? code : code + 1) << c.name << " mid " << mid;
    EXPECT_EQ(c.enc(std::nextafter(mid, a)), code) << c.name;
    EXPECT_EQ(c.enc(std::nextafter(mid, b)), code + 1) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8,
                         ::testing::Values(Fp8Case{"e4m3", f32_to_fp8e4m3, fp8e4m3_to_f32, 448.f, 3},
                                           Fp8Case{"e5m2", f32_to_fp8e5m2, fp8e5m2_to_f32, 57344.f,
                                                   2}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Fp8, KnownValues) {
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(fp8e4m3_to_f32(0x7E), 448.f);
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0x7F)));
  EXPECT_EQ(fp8e5m2_to_f32(0x7B), 57344.f);
  EXPECT_TRUE(std::isinf(fp8e5m2_to_f32(0x7C)));
  EXPECT_EQ(fp8e5m2_to_f32(0x01), std::ldexp(1.0f, -16));
}

TEST(Arena, AlignsAndRejectsOverflow) {
  Arena a(1000, "activations");
  TensorView x = a.alloc(Dtype::kF32, {3, 5});
  TensorView y = a.alloc(Dtype::kBF16, {7});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.data) % Arena::kAlign, 0u);
  EXPECT_EQ(x.numel(), 15);
  EXPECT_EQ(x.bytes(), 60u);
  EXPECT_EQ(y.shape_str(), "(7) bf16");
  EXPECT_EQ(static_cast<uint8_t*>(y.data) - static_cast<uint8_t*>(x.data), 64);
  try {
    a.alloc(Dtype::kF32, {1000});
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("activations"), std::string::npos) << e.what();
  }
  a.reset();
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.alloc(Dtype::kF32, {2}).data, x.data);  // reset reuses from the front
  EXPECT_THROW(a.alloc(Dtype::kF32, {}), Error);
  EXPECT_THROW(a.alloc(Dtype::kF32, {-1}), Error);
}

TEST(Arena, ZeroClearsWhatWasHandedOut) {
  Arena a(256);
  TensorView v = a.alloc(Dtype::kF32, {16});
  for (int i = 0; i < 16; ++i) v.as<float>()[i] = float(i + 1);
  a.zero();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(v.as<float>()[i], 0.f);
}

}  // namespace
}  // namespace moe

#include "core/checksum.h"

namespace moe {
namespace {

// Published check value of CRC-32C (RFC 3720 appendix B.4 vectors too).
TEST(Crc32c, KnownVectorsAndChaining) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  const std::string ones(32, '\xFF');
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[size_t(i)] = char(i);
  EXPECT_EQ(crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  // Chaining over any split equals one pass.
  const std::string s = "The quick brown fox jumps over the lazy dog, 0123456789";
  for (size_t k = 0; k <= s.size(); ++k)
    EXPECT_EQ(crc32c(s.data() + k, s.size() - k, crc32c(s.data(), k)), crc32c(s.data(), s.size()));
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

}  // namespace
}  // namespace moe
