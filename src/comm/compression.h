// Wire formats for compressed collectives (DESIGN.md section 5): f32 values travel as bf16,
// as FP8 E4M3 with one f32 scale per 128 values (DeepSeek-V3's dispatch format, arXiv
// 2412.19437 sec. 3.3), or as INT8 with one scale per 128 values. A collective takes them as
// an option (`Compression`), not as a new API per case:
//
//   world->reduce_scatter(grad, shard, n, Dtype::kF32, ReduceOp::kSum, {Wire::kInt8, residual});
//
// Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): with a residual
// buffer, the sender adds what rounding lost last time before it encodes, and keeps what it
// loses now. What the receivers get over T calls then differs from the sum of the inputs by
// one call's rounding error, not T of them (tests/comm/compression_test.cpp checks both).
//
// Per value (x in a block whose largest magnitude is amax), decode(encode(x)) - x is at most:
//   bf16   2^-8 |x|                          (round to nearest even, 8 significant bits)
//   int8   amax / 254                        (scale amax/127, round to nearest)
//   fp8    max(2^-4 |x|, 2^-10 amax / 448)   (scale amax/448; 4 significant bits, and half
//                                             the subnormal step 2^-9 of E4M3 below 2^-6)
// wire_error_bound() gives these, and the tests assert them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe::comm {

enum class Wire : uint8_t { kAsIs = 0, kBF16 = 1, kFP8 = 2, kInt8 = 3 };

constexpr size_t kWireBlock = 128;  // values per scale (fp8, int8)

const char* wire_name(Wire w);  // "fp32", "bf16", "fp8", "int8"
// Parses "fp32" (or "f32", "none"), "bf16", "fp8" (or "fp8e4m3"), "int8"; throws naming the
// text, `what` (the option it came from, e.g. "[parallel] grad_comm_dtype") and the choices.
Wire parse_wire(const std::string& text, const char* what = "wire dtype");

// How a collective's f32 values travel.
struct Compression {
  Wire wire = Wire::kAsIs;
  // Error feedback: as many floats as the call's input (reduce_scatter: size()*recv_count,
  // all_reduce: count), zero at first, kept by the caller from one call to the next.
  float* residual = nullptr;
};

// Bytes of n values encoded (fp8, int8: ceil(n/128) f32 scales, then n bytes).
size_t wire_bytes(Wire w, size_t n);
// Encodes x[0..n) into out (wire_bytes(w, n) bytes). With a residual r[0..n): encodes x + r
// and sets r to (x + r) - decode(what was encoded).
void wire_encode(Wire w, const float* x, size_t n, void* out, float* residual = nullptr);
// out[i] = decode(in)[i], or out[i] += decode(in)[i] with add.
void wire_decode(Wire w, const void* in, size_t n, float* out, bool add = false);
// The largest |decode(encode(x)) - x| the format allows for value x in a block whose largest
// magnitude is amax (see the table above).
double wire_error_bound(Wire w, double x, double amax);

}  // namespace moe::comm
