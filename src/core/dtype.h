// Element types (DESIGN.md section 1): their sizes, names, and exact conversions to and from
// float. Conversions to narrow types round to nearest, ties to even, as PyTorch does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

enum class Dtype : uint8_t { kF32, kF64, kBF16, kF16, kFP8E4M3, kFP8E5M2, kI8, kI32, kI64 };

size_t dtype_size(Dtype t);           // bytes per element, e.g. 2 for kBF16
const char* dtype_name(Dtype t);      // "f32", "bf16", "fp8e4m3", ...
const char* safetensors_name(Dtype t);  // "F32", "BF16", "F8_E4M3", ...
// Parses either spelling ("bf16" or "BF16"); throws naming the text and the allowed values.
Dtype parse_dtype(const std::string& text);

// bf16: the high 16 bits of an f32, rounded to nearest even; NaN stays NaN.
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t h);
// IEEE binary16.
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
// OCP FP8: e4m3 (bias 7, max 448, no infinities) and e5m2 (bias 15, max 57344). Both saturate:
// out-of-range values and infinities become the largest finite value of their sign, as the
// FP8 training recipes (Transformer Engine, DeepSeek-V3) cast.
uint8_t f32_to_fp8e4m3(float x);
float fp8e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8e5m2(float x);
float fp8e5m2_to_f32(uint8_t v);

}  // namespace moe
