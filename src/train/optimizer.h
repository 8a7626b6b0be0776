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

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const AdamWConfig& cfg);
  // One step at learning rate lr over every trainable parameter.
  void step(float* params, const float* grads, double lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }  // when resuming
  const std::vector<float>& m() const { return m_; }
  const std::vector<float>& v() const { return v_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  struct Run {  // adjacent trainable parameters with the same decay
    int64_t offset, numel;
    bool decay;
  };
  const ParamLayout& layout_;
  AdamWConfig cfg_;
  std::vector<Run> runs_;
  std::vector<float> m_, v_;  // [total_numel]
  int64_t t_ = 0;
};

}  // namespace moe
