#include "train/optimizer.h"

#include "kernels/cpu/kernels.h"

namespace moe {

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& cfg)
    : layout_(layout), cfg_(cfg), m_(layout.total_numel, 0.0f), v_(layout.total_numel, 0.0f) {
  // Adjacent trainable parameters with the same weight decay form one run: one kernel call
  // (one parallel region) per run instead of per tensor (a layer holds 3E expert tensors).
  for (const auto& s : layout_.specs) {
    if (!s.trainable || s.numel == 0) continue;
    if (!runs_.empty() && runs_.back().decay == s.decay &&
        runs_.back().offset + runs_.back().numel == s.offset) {
      runs_.back().numel += s.numel;
    } else {
      runs_.push_back(Run{s.offset, s.numel, s.decay});
    }
  }
}

void AdamW::step(float* params, const float* grads, double lr) {
  ++t_;
  for (const Run& r : runs_) {
    cpu::adamw_step(params + r.offset, m_.data() + r.offset, v_.data() + r.offset,
                    grads + r.offset, r.numel, static_cast<float>(lr),
                    static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                    static_cast<float>(cfg_.eps),
                    r.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f, t_);
  }
}

}  // namespace moe
