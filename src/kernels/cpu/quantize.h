// Low precision on the CPU: bf16 casts of whole arrays, and the FP8 (E4M3) fine-grained
// quantization of DeepSeek-V3's training recipe.
//
// No FP8 matrix unit exists on this CPU, so FP8 GEMMs are emulated honestly: each operand is
// quantized to E4M3 values with one scale per tile (1 x 128 activation tiles along the reduced
// dimension, 128 x 128 weight blocks), the scale is applied back, and the product runs on the
// bf16 GEMM with f32 accumulation. The scales are powers of two (the UE8M0 scales of
// DeepSeek-V3.1 and the OCP MX formats), so a dequantized value q * s has at most 4 significant
// bits and is exact in bf16: the bf16 GEMM then computes exactly the sum of products of the FP8
// values an FP8 GEMM with f32 accumulation would. Scales are computed online from each tile's
// largest magnitude (no delayed scaling): s = 2^ceil(log2(amax / 448)).
//
// Tiles at the end of a row or column that are shorter than 128 are quantized as if padded with
// zeros (their scale comes from the values present), so no size has to be a multiple of 128.
// Non-finite inputs give NaN outputs, which the stability guards then see.
#pragma once

#include <bit>
#include <cstdint>

#include "kernels/cpu/kernels.h"

namespace moe::cpu {

// True when this CPU has the AVX-512 BF16 dot product and MOE_NO_AVX512_BF16 is unset or 0.
// Without it the bf16 GEMMs widen to f32 (the trainer warns). Read once per process.
bool bf16_native();

// bf16(x): round to nearest even on the high 16 bits; a NaN keeps its sign and becomes quiet.
// Branch-free so the loops that call it vectorize. Matches core/dtype.h f32_to_bf16.
inline bf16 to_bf16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<bf16>(nan ? ((u >> 16) | 0x40u) : rounded);
}

// y (n) = bf16(x), rounded to nearest even, NaN kept (as core/dtype.h f32_to_bf16).
void cast_bf16(bf16* y, const float* x, int64_t n);
// y (n) = x widened to f32 (exact).
void widen_bf16(float* y, const bf16* x, int64_t n);

constexpr int64_t kFp8Tile = 128;   // values per scale along a row or column; weight block side
constexpr float kE4m3Max = 448.0f;  // largest finite E4M3 value

// The E4M3 value nearest to v (ties to even), v already scaled into [-448, 448]; larger
// magnitudes saturate to +-448, NaN stays NaN. Exact as core/dtype.h's encode then decode.
float round_e4m3(float v);

// The power-of-two scale of a tile whose largest magnitude is amax (1 for amax = 0).
float fp8_tile_scale(float amax);

// x (rows, cols) -> y (rows, cols) as dequantized E4M3 values in bf16, one scale per 1 x 128
// tile along each row: for operands whose rows are reduced over their columns (the input of a
// linear layer's forward, the output gradient of its backward_x).
void fp8_quantize_rows(bf16* y, const float* x, int64_t rows, int64_t cols);
// The same with 128 x 1 tiles down each column, for operands reduced over their rows (both
// inputs of backward_w: dW = dy^T x sums over tokens). Tiles restart at each group boundary of
// offsets (groups + 1 entries, offsets[0] = 0, offsets[groups] = rows), so each expert's
// weight gradient sees only its own tokens' tiles; offsets = nullptr is one group.
void fp8_quantize_cols(bf16* y, const float* x, int64_t rows, int64_t cols,
                       const int64_t* offsets = nullptr, int64_t groups = 1);
// A weight W [rows, cols] in 128 x 128 blocks, one scale per block.
void fp8_quantize_blocks(bf16* y, const float* W, int64_t rows, int64_t cols);

}  // namespace moe::cpu
