#include "train/optimizer.h"

#include "kernels/cpu/kernels.h"

namespace moe {

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& cfg)
    : layout_(layout), cfg_(cfg), m_(layout.total_numel, 0.0f), v_(layout.total_numel, 0.0f) {}

void AdamW::step(float* params, const float* grads, double lr) {
  ++t_;
  for (const auto& s : layout_.specs) {
    if (!s.trainable) continue;
    cpu::adamw_step(params + s.offset, m_.data() + s.offset, v_.data() + s.offset,
                    grads + s.offset, s.numel, static_cast<float>(lr),
                    static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                    static_cast<float>(cfg_.eps),
                    s.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f, t_);
  }
}

}  // namespace moe
