// Where a training step's time goes, by kind of work: wall time of the kernel entry points,
// summed per part while profiling is on (bench_train --profile). Off by default; a Scope then
// costs one load and a branch.
//
// Only the outermost scope on the calling thread counts, and only outside parallel regions
// (kernels are entered from the main thread and open their own), so nested entry points (a
// linear layer calling gemm) are not counted twice. What no scope covers is the framework's
// share: step time minus the parts.
#pragma once

#include <array>
#include <cstdint>

namespace moe::prof {

enum class Part : int {
  kGemm,         // dense GEMMs: projections, dense FFN, shared experts, lm_head
  kGroupedGemm,  // the routed experts' grouped GEMMs
  kAttention,    // the attention core, forward and backward
  kPermute,      // token permutation to and from expert order
  kRouter,       // router scores, top-k, counts, dispatch plan, router backward
  kNorm,         // RMSNorm forward and backward
  kElementwise,  // SwiGLU, RoPE, embedding, cross-entropy
  kCast,         // bf16 casts and FP8 quantization of GEMM operands
  kOptimizer,    // AdamW
  kCount
};

const char* part_name(Part p);

struct Totals {
  std::array<double, static_cast<int>(Part::kCount)> seconds{};
  std::array<int64_t, static_cast<int>(Part::kCount)> calls{};
};

void enable(bool on);
bool enabled();
void reset();
Totals totals();

class Scope {
 public:
  explicit Scope(Part p);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Part part_;
  bool counted_ = false;  // entered the depth count (profiling on, outside parallel regions)
  bool timing_ = false;   // the outermost scope: its time is recorded
  double t0_ = 0;
};

}  // namespace moe::prof
