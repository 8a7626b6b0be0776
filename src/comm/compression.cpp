#include "comm/compression.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace moe::comm {

namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// The library links nothing of src/core but headers, so it keeps its own conversions (the
// same rounding as core/dtype.h: nearest, ties to even).
uint16_t to_bf16(float x) {
  const uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float from_bf16(uint16_t h) { return float_of(uint32_t(h) << 16); }

// OCP FP8 E4M3 (bias 7, largest 448, no infinities), saturating; |y| <= ~448 here since the
// block scale maps the block's largest magnitude to 448.
uint8_t to_e4m3(float y) {
  const uint8_t sign = std::signbit(y) ? 0x80 : 0;
  const float a = std::fabs(y);
  if (!(a < 448.0f)) return sign | 0x7e;  // also NaN: a scale of a finite block never makes one
  if (a < 0.015625f) {                   // below 2^-6: subnormals m * 2^-9 (m = 8 is 2^-6)
    return sign | uint8_t(std::nearbyint(a * 512.0f));
  }
  const uint32_t u = bits_of(a);
  const uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20;  // exponent and 3 mantissa bits
  const uint32_t code = (((r >> 3) - 120u) << 3) | (r & 7u);    // rebias 127 -> 7
  return sign | uint8_t(std::min<uint32_t>(code, 0x7e));
}

struct E4m3Table {
  std::array<float, 256> v{};
  E4m3Table() {
    for (int c = 0; c < 256; ++c) {
      const int e = (c >> 3) & 15, m = c & 7;
      float a = e == 0 ? float(m) / 512.0f : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
      if ((c & 0x7f) == 0x7f) a = NAN;
      v[size_t(c)] = (c & 0x80) ? -a : a;
    }
  }
};
const E4m3Table kE4m3;

size_t blocks_of(size_t n) { return (n + kWireBlock - 1) / kWireBlock; }

// One block of a scaled format: b = x (+ r), the block's scale, its codes, and r updated.
template <class Encode, class Decode>
void encode_blocks(const float* x, size_t n, void* out, float* residual, float top,
                   Encode enc, Decode dec) {
  float* scales = static_cast<float*>(out);
  uint8_t* codes = static_cast<uint8_t*>(out) + 4 * blocks_of(n);
  float b[kWireBlock];
  for (size_t k = 0, i0 = 0; i0 < n; ++k, i0 += kWireBlock) {
    const size_t m = std::min(kWireBlock, n - i0);
    float amax = 0;
    for (size_t i = 0; i < m; ++i) {
      b[i] = residual ? x[i0 + i] + residual[i0 + i] : x[i0 + i];
      amax = std::max(amax, std::fabs(b[i]));
    }
    const float scale = amax / top, inv = amax > 0 ? top / amax : 0.0f;
    scales[k] = scale;
    for (size_t i = 0; i < m; ++i) {
      const uint8_t c = enc(b[i] * inv);
      codes[i0 + i] = c;
      if (residual) residual[i0 + i] = b[i] - dec(c) * scale;
    }
  }
}

template <class Decode>
void decode_blocks(const void* in, size_t n, float* out, bool add, Decode dec) {
  const float* scales = static_cast<const float*>(in);
  const uint8_t* codes = static_cast<const uint8_t*>(in) + 4 * blocks_of(n);
  for (size_t k = 0, i0 = 0; i0 < n; ++k, i0 += kWireBlock) {
    const size_t m = std::min(kWireBlock, n - i0);
    const float s = scales[k];
    if (add)
      for (size_t i = 0; i < m; ++i) out[i0 + i] += dec(codes[i0 + i]) * s;
    else
      for (size_t i = 0; i < m; ++i) out[i0 + i] = dec(codes[i0 + i]) * s;
  }
}

uint8_t to_int8(float y) {
  return uint8_t(int8_t(std::clamp(std::nearbyint(y), -127.0f, 127.0f)));
}
float from_int8(uint8_t c) { return float(int8_t(c)); }
float from_e4m3(uint8_t c) { return kE4m3.v[c]; }

}  // namespace

const char* wire_name(Wire w) {
  switch (w) {
    case Wire::kAsIs: return "fp32";
    case Wire::kBF16: return "bf16";
    case Wire::kFP8: return "fp8";
    case Wire::kInt8: return "int8";
  }
  return "?";
}

Wire parse_wire(const std::string& text, const char* what) {
  if (text == "fp32" || text == "f32" || text == "none" || text.empty()) return Wire::kAsIs;
  if (text == "bf16") return Wire::kBF16;
  if (text == "fp8" || text == "fp8e4m3") return Wire::kFP8;
  if (text == "int8") return Wire::kInt8;
  MOE_FAIL("comm", what, " = \"", text, "\": use fp32, bf16, fp8 (E4M3, a scale per 128 values)",
            " or int8 (a scale per 128 values)");
}

size_t wire_bytes(Wire w, size_t n) {
  switch (w) {
    case Wire::kAsIs: return 4 * n;
    case Wire::kBF16: return 2 * n;
    case Wire::kFP8:
    case Wire::kInt8: return 4 * blocks_of(n) + n;
  }
  return 0;
}

void wire_encode(Wire w, const float* x, size_t n, void* out, float* residual) {
  switch (w) {
    case Wire::kAsIs:
      if (!residual) {
        std::memcpy(out, x, 4 * n);
      } else {
        float* o = static_cast<float*>(out);
        for (size_t i = 0; i < n; ++i) o[i] = x[i] + residual[i], residual[i] = 0;
      }
      return;
    case Wire::kBF16: {
      uint16_t* o = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < n; ++i) {
        const float b = residual ? x[i] + residual[i] : x[i];
        o[i] = to_bf16(b);
        if (residual) residual[i] = b - from_bf16(o[i]);
      }
      return;
    }
    case Wire::kFP8: return encode_blocks(x, n, out, residual, 448.0f, to_e4m3, from_e4m3);
    case Wire::kInt8: return encode_blocks(x, n, out, residual, 127.0f, to_int8, from_int8);
  }
}

void wire_decode(Wire w, const void* in, size_t n, float* out, bool add) {
  switch (w) {
    case Wire::kAsIs: {
      const float* p = static_cast<const float*>(in);
      if (add)
        for (size_t i = 0; i < n; ++i) out[i] += p[i];
      else
        std::memcpy(out, in, 4 * n);
      return;
    }
    case Wire::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(in);
      if (add)
        for (size_t i = 0; i < n; ++i) out[i] += from_bf16(p[i]);
      else
        for (size_t i = 0; i < n; ++i) out[i] = from_bf16(p[i]);
      return;
    }
    case Wire::kFP8: return decode_blocks(in, n, out, add, from_e4m3);
    case Wire::kInt8: return decode_blocks(in, n, out, add, from_int8);
  }
}

double wire_error_bound(Wire w, double x, double amax) {
  switch (w) {
    case Wire::kAsIs: return 0;
    case Wire::kBF16: return std::ldexp(std::fabs(x), -8);
    case Wire::kFP8: return std::max(std::ldexp(std::fabs(x), -4), std::ldexp(amax / 448, -10));
    case Wire::kInt8: return amax / 254;
  }
  return 0;
}

}  // namespace moe::comm
