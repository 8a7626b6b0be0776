#include "train/optimizer.h"

#include <algorithm>

#include "kernels/cpu/kernels.h"

namespace moe {

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& cfg, std::vector<ArenaRange> owned)
    : layout_(layout), cfg_(cfg), owned_(std::move(owned)) {
  if (owned_.empty()) owned_.push_back({0, layout.total_numel});
  // Adjacent trainable parameters with the same weight decay form one run: one kernel call
  // (one parallel region) per run instead of per tensor (a layer holds 3E expert tensors).
  // Runs are cut at the owned ranges' ends.
  int64_t state = 0;
  for (const ArenaRange& r : owned_) {
    for (const auto& s : layout_.specs) {
      const int64_t a = std::max(s.offset, r.offset);
      const int64_t b = std::min(s.offset + s.numel, r.offset + r.numel);
      if (!s.trainable || a >= b) continue;
      if (!runs_.empty() && runs_.back().decay == s.decay &&
          runs_.back().offset + runs_.back().numel == a &&
          runs_.back().state + runs_.back().numel == state + (a - r.offset)) {
        runs_.back().numel += b - a;
      } else {
        runs_.push_back(Run{a, b - a, state + (a - r.offset), s.decay});
      }
    }
    state += r.numel;
  }
  m_.assign(size_t(state), 0.0f);
  v_.assign(size_t(state), 0.0f);
}

void AdamW::step(float* params, const float* grads, double lr) {
  ++t_;
  for (const Run& r : runs_) {
    cpu::adamw_step(params + r.offset, m_.data() + r.state, v_.data() + r.state,
                    grads + r.state, r.numel, static_cast<float>(lr),
                    static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                    static_cast<float>(cfg_.eps),
                    r.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f, t_);
  }
}

}  // namespace moe
