// AdamW over the parameter arena (decoupled weight decay, PyTorch semantics); parameters whose
// spec says decay = false (norms, biases) get none; untrainable ones (the balancing bias) are
// skipped.
#pragma once

#include <cstdint>
#include <vector>

#include "model/params.h"

namespace moe {

struct AdamWConfig {
  double lr = 1e-3;          // peak learning rate, e.g. 3e-3
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// A range of the parameter arena, in floats.
struct ArenaRange {
  int64_t offset = 0, numel = 0;
};

// With ZeRO-1 a rank owns some ranges of the arena (its shards) and keeps moments only for
// them: m() and v() hold the owned ranges back to back, and so do the gradients step() takes.
class AdamW {
 public:
  // owned: the ranges this rank updates, in arena order (empty: the whole arena).
  AdamW(const ParamLayout& layout, const AdamWConfig& cfg, std::vector<ArenaRange> owned = {});
  // One step at learning rate lr over every trainable parameter in the owned ranges. params is
  // the whole arena; grads holds the owned ranges back to back (the arena itself when the
  // whole arena is owned).
  void step(float* params, const float* grads, double lr);
  const std::vector<ArenaRange>& owned() const { return owned_; }
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }  // when resuming
  const std::vector<float>& m() const { return m_; }
  const std::vector<float>& v() const { return v_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  struct Run {  // adjacent trainable parameters with the same decay, inside one owned range
    int64_t offset, numel;  // in the arena
    int64_t state;          // where the run starts in m_, v_ and the packed gradients
    bool decay;
  };
  const ParamLayout& layout_;
  AdamWConfig cfg_;
  std::vector<ArenaRange> owned_;
  std::vector<Run> runs_;
  std::vector<float> m_, v_;  // the owned ranges back to back ([total_numel] on one process)
  int64_t t_ = 0;
};

}  // namespace moe
