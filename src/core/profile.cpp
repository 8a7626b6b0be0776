#include "core/profile.h"

#include <omp.h>

#include <atomic>
#include <chrono>

namespace moe::prof {

namespace {

std::atomic<bool> g_on{false};
Totals g_totals;  // written by the main thread only (outside parallel regions)
thread_local int t_depth = 0;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

const char* part_name(Part p) {
  switch (p) {
    case Part::kGemm:
      return "dense GEMM";
    case Part::kGroupedGemm:
      return "grouped GEMM (experts)";
    case Part::kAttention:
      return "attention core";
    case Part::kPermute:
      return "permute / unpermute";
    case Part::kRouter:
      return "router";
    case Part::kNorm:
      return "RMSNorm";
    case Part::kElementwise:
      return "SwiGLU, RoPE, embedding, loss";
    case Part::kCast:
      return "bf16 / fp8 casts";
    case Part::kOptimizer:
      return "AdamW";
    case Part::kCount:
      break;
  }
  return "?";
}

void enable(bool on) { g_on.store(on, std::memory_order_relaxed); }
bool enabled() { return g_on.load(std::memory_order_relaxed); }
void reset() { g_totals = Totals{}; }
Totals totals() { return g_totals; }

Scope::Scope(Part p) : part_(p) {
  if (!g_on.load(std::memory_order_relaxed) || omp_in_parallel()) return;
  counted_ = true;
  if (t_depth++ == 0) {
    timing_ = true;
    t0_ = now();
  }
}

Scope::~Scope() {
  if (!counted_) return;
  --t_depth;
  if (!timing_) return;
  const int i = static_cast<int>(part_);
  g_totals.seconds[i] += now() - t0_;
  g_totals.calls[i] += 1;
}

}  // namespace moe::prof
