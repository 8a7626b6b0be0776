// bf16 casts and FP8 (E4M3) tile quantization; see quantize.h for the recipe.
#include "core/profile.h"
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace moe::cpu {

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

constexpr bf16 kBf16NaN = 0x7FC0;

// The running largest magnitude; a NaN sticks (std::max would drop it).
inline float amax_with(float amax, float v) {
  const float a = std::fabs(v);
  return (a > amax || a != a) ? a : amax;
}
constexpr float kMinNormalE4m3 = 0.015625f;  // 2^-6; below it the spacing is 2^-9

inline float round_e4m3_inline(float v) {
  const float a = std::fabs(v);
  if (!(a <= kE4m3Max)) return std::isnan(v) ? v : std::copysign(kE4m3Max, v);
  if (a >= kMinNormalE4m3) {  // keep 3 mantissa bits, ties to even
    uint32_t u = bits(v);
    u = (u + 0x7FFFFu + ((u >> 20) & 1u)) & 0xFFF00000u;
    return from_bits(u);
  }
  return std::nearbyint(v * 512.0f) * (1.0f / 512.0f);  // subnormals: multiples of 2^-9
}

// q * s is exact in bf16 (at most 4 significant bits, s a power of two): truncation is exact.
inline bf16 dequantized(float x, float inv_scale, float scale) {
  return static_cast<bf16>(bits(round_e4m3_inline(x * inv_scale) * scale) >> 16);
}

}  // namespace

bool bf16_native() {
  static const bool native = [] {
    const char* off = std::getenv("MOE_NO_AVX512_BF16");
    if (off && *off && std::strcmp(off, "0") != 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return native;
}

void cast_bf16(bf16* y, const float* x, int64_t n) {
  const prof::Scope prof_scope(prof::Part::kCast);
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = to_bf16(x[i]);
}

void widen_bf16(float* y, const bf16* x, int64_t n) {
  const prof::Scope prof_scope(prof::Part::kCast);
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = from_bits(uint32_t(x[i]) << 16);
}

float round_e4m3(float v) { return round_e4m3_inline(v); }

float fp8_tile_scale(float amax) {
  if (!(amax > 0) || !std::isfinite(amax)) return 1.0f;
  int e = 0;
  const float m = std::frexp(amax / kE4m3Max, &e);      // amax / 448 = m * 2^e, m in [0.5, 1)
  const int p = std::max(m == 0.5f ? e - 1 : e, -126);  // s = 2^ceil(log2(amax / 448))
  return std::ldexp(1.0f, p);
}

void fp8_quantize_rows(bf16* y, const float* x, int64_t rows, int64_t cols) {
  const prof::Scope prof_scope(prof::Part::kCast);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < cols; c0 += kFp8Tile) {
      const int64_t n = std::min(kFp8Tile, cols - c0);
      const float* xt = x + r * cols + c0;
      bf16* yt = y + r * cols + c0;
      float amax = 0;
      for (int64_t i = 0; i < n; ++i) amax = amax_with(amax, xt[i]);
      if (!std::isfinite(amax)) {
        std::fill(yt, yt + n, kBf16NaN);
        continue;
      }
      const float s = fp8_tile_scale(amax), inv = 1.0f / s;
      for (int64_t i = 0; i < n; ++i) yt[i] = dequantized(xt[i], inv, s);
    }
  }
}

void fp8_quantize_cols(bf16* y, const float* x, int64_t rows, int64_t cols, const int64_t* offsets,
                       int64_t groups) {
  const prof::Scope prof_scope(prof::Part::kCast);
  const int64_t one[2] = {0, rows};
  if (!offsets) offsets = one, groups = 1;
  // Work items: (tile of up to 128 rows inside a group, chunk of 64 columns).
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  int64_t tiles = 0;
  for (int64_t g = 0; g < groups; ++g)
    tiles += (offsets[g + 1] - offsets[g] + kFp8Tile - 1) / kFp8Tile;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t item = 0; item < tiles * chunks; ++item) {
    int64_t t = item / chunks, g = 0;
    const int64_t c0 = (item % chunks) * kChunk, nc = std::min(kChunk, cols - c0);
    for (;; ++g) {  // tile t's group
      const int64_t n = (offsets[g + 1] - offsets[g] + kFp8Tile - 1) / kFp8Tile;
      if (t < n) break;
      t -= n;
    }
    const int64_t r0 = offsets[g] + t * kFp8Tile, r1 = std::min(r0 + kFp8Tile, offsets[g + 1]);
    float amax[kChunk] = {};
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < nc; ++c) amax[c] = amax_with(amax[c], x[r * cols + c0 + c]);
    float s[kChunk], inv[kChunk];
    bool bad[kChunk];
    for (int64_t c = 0; c < nc; ++c) {
      bad[c] = !std::isfinite(amax[c]);
      s[c] = fp8_tile_scale(amax[c]);
      inv[c] = 1.0f / s[c];
    }
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < nc; ++c)
        y[r * cols + c0 + c] = bad[c] ? kBf16NaN : dequantized(x[r * cols + c0 + c], inv[c], s[c]);
  }
}

void fp8_quantize_blocks(bf16* y, const float* W, int64_t rows, int64_t cols) {
  const prof::Scope prof_scope(prof::Part::kCast);
  const int64_t br = (rows + kFp8Tile - 1) / kFp8Tile, bc = (cols + kFp8Tile - 1) / kFp8Tile;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < br * bc; ++b) {
    const int64_t r0 = (b / bc) * kFp8Tile, r1 = std::min(r0 + kFp8Tile, rows);
    const int64_t c0 = (b % bc) * kFp8Tile, c1 = std::min(c0 + kFp8Tile, cols);
    float amax = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) amax = amax_with(amax, W[r * cols + c]);
    const bool bad = !std::isfinite(amax);
    const float s = fp8_tile_scale(amax), inv = 1.0f / s;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c)
        y[r * cols + c] = bad ? kBf16NaN : dequantized(W[r * cols + c], inv, s);
  }
}

}  // namespace moe::cpu
