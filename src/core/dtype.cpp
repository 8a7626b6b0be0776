#include "core/dtype.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace moe {

namespace {

struct DtypeInfo {
  Dtype t;
  size_t size;
  const char* name;
  const char* st_name;
};
constexpr DtypeInfo kInfo[] = {
    {Dtype::kF32, 4, "f32", "F32"},         {Dtype::kF64, 8, "f64", "F64"},
    {Dtype::kBF16, 2, "bf16", "BF16"},      {Dtype::kF16, 2, "f16", "F16"},
    {Dtype::kFP8E4M3, 1, "fp8e4m3", "F8_E4M3"}, {Dtype::kFP8E5M2, 1, "fp8e5m2", "F8_E5M2"},
    {Dtype::kI8, 1, "i8", "I8"},            {Dtype::kI32, 4, "i32", "I32"},
    {Dtype::kI64, 8, "i64", "I64"},
};

const DtypeInfo& info(Dtype t) {
  for (const auto& i : kInfo)
    if (i.t == t) return i;
  MOE_FAIL("dtype", "unknown dtype code ", int(t));
}

// A binary minifloat with `ebits` exponent and `mbits` mantissa bits (no sign), value
// (1 + m/2^mbits) * 2^(e - bias), subnormals at e = 0. `max_code` is the largest finite code.
struct Minifloat {
  int ebits, mbits, bias;
  uint32_t max_code;
  bool ieee_inf;  // all-ones exponent means inf/NaN (f16, e5m2); otherwise only NaN (e4m3)
  uint32_t nan_code;
};
constexpr Minifloat kF16{5, 10, 15, 0x7BFF, true, 0x7E00};
constexpr Minifloat kE4M3{4, 3, 7, 0x7E, false, 0x7F};
constexpr Minifloat kE5M2{5, 2, 15, 0x7B, true, 0x7E};

double decode(const Minifloat& f, uint32_t code) {
  const uint32_t sign = code >> (f.ebits + f.mbits) & 1u;
  const uint32_t mag = code & ((1u << (f.ebits + f.mbits)) - 1);
  const uint32_t e = mag >> f.mbits, m = mag & ((1u << f.mbits) - 1);
  double v;
  if (f.ieee_inf && e == (1u << f.ebits) - 1) {
    v = m == 0 ? INFINITY : NAN;
  } else if (!f.ieee_inf && mag > f.max_code) {
    v = NAN;
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - f.bias - f.mbits);
  } else {
    v = std::ldexp(double(m | (1u << f.mbits)), int(e) - f.bias - f.mbits);
  }
  return sign ? -v : v;
}

// Round to nearest even. Values beyond the largest finite one become inf where the format has
// it and `saturate` is false, else the largest finite value.
uint32_t encode(const Minifloat& f, double x, bool saturate) {
  const uint32_t sign = std::signbit(x) ? 1u << (f.ebits + f.mbits) : 0u;
  if (std::isnan(x)) return sign | f.nan_code;
  const double a = std::fabs(x);
  const uint32_t inf_code = ((1u << f.ebits) - 1) << f.mbits;
  const double max = decode(f, f.max_code);
  if (std::isinf(a)) return sign | (f.ieee_inf && !saturate ? inf_code : f.max_code);
  int k;
  std::frexp(a, &k);  // a = frac * 2^k, frac in [0.5, 1)
  const int min_exp = 1 - f.bias;
  const int exp = a == 0 ? min_exp : std::max(k - 1, min_exp);
  // a / quantum is exact in double for every x that came from a float.
  double m = std::nearbyint(std::ldexp(a, f.mbits - exp));
  uint32_t code;
  if (exp == min_exp && m < double(1u << f.mbits)) {
    code = uint32_t(m);  // subnormal (m may round up to the smallest normal: same bits)
  } else {
    int e = exp;
    if (m >= double(2u << f.mbits)) m /= 2, ++e;
    code = (uint32_t(e + f.bias) << f.mbits) | (uint32_t(m) - (1u << f.mbits));
  }
  if (code > f.max_code || decode(f, code) > max) {
    return sign | (f.ieee_inf && !saturate ? inf_code : f.max_code);
  }
  return sign | code;
}

}  // namespace

size_t dtype_size(Dtype t) { return info(t).size; }
const char* dtype_name(Dtype t) { return info(t).name; }
const char* safetensors_name(Dtype t) { return info(t).st_name; }

Dtype parse_dtype(const std::string& text) {
  std::string allowed;
  for (const auto& i : kInfo) {
    if (text == i.name || text == i.st_name) return i.t;
    allowed += std::string(allowed.empty() ? "" : ", ") + i.name;
  }
  MOE_FAIL("dtype", "unknown dtype '", text, "'; use one of ", allowed);
}

uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (carry into the exponent is right)
  return uint16_t(u >> 16);
}

float bf16_to_f32(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

uint16_t f32_to_f16(float x) { return uint16_t(encode(kF16, x, false)); }
float f16_to_f32(uint16_t h) { return float(decode(kF16, h)); }
uint8_t f32_to_fp8e4m3(float x) { return uint8_t(encode(kE4M3, x, true)); }
float fp8e4m3_to_f32(uint8_t v) { return float(decode(kE4M3, v)); }
uint8_t f32_to_fp8e5m2(float x) { return uint8_t(encode(kE5M2, x, true)); }
float fp8e5m2_to_f32(uint8_t v) { return float(decode(kE5M2, v)); }

}  // namespace moe
