// Counter-based random numbers (Philox4x32-10): value i of stream s under seed k is a pure
// function of (k, s, i), so initialization and sampling do not depend on thread count or order.
#pragma once

#include <cstdint>

namespace moe {

struct Philox {
  // Returns 4 independent 32-bit words for (seed, stream, counter).
  static void generate(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);
};

// Uniform in (0, 1], from element `index` of `stream`.
double uniform01(uint64_t seed, uint64_t stream, uint64_t index);
// Standard normal (Box-Muller over one Philox block), element `index` of `stream`.
double normal01(uint64_t seed, uint64_t stream, uint64_t index);
// A stream id from a name (FNV-1a), so e.g. each parameter gets its own stream.
uint64_t stream_id(const char* name);

}  // namespace moe
