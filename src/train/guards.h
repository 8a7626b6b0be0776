// Stability guards: a loss is a spike when it lies more than `spike_zscore` standard deviations
// above the mean of the recent accepted losses (PaLM and OLMo skip such updates); several
// spikes within one window mean the run has gone bad and should roll back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace moe {

enum class Verdict { kAccept, kSkipNonFinite, kSkipSpike, kRollback };

class SpikeGuard {
 public:
  explicit SpikeGuard(const GuardConfig& cfg) : cfg_(cfg) {}
  // Decides what to do with a step whose loss and gradient norm are given; accepted losses
  // join the window. `why` gets a short human explanation for the log.
  Verdict check(int64_t step, double loss, double grad_norm, std::string* why);
  void clear_spikes() { spike_steps_.clear(); }

  // State that a checkpoint carries.
  std::vector<double>& window() { return window_; }
  std::vector<int64_t>& spike_steps() { return spike_steps_; }

 private:
  GuardConfig cfg_;
  std::vector<double> window_;       // recent accepted losses, oldest first
  std::vector<int64_t> spike_steps_; // recent spikes
};

// Test hook (TrainConfig::fault_inject): "nan@12,spike@20" poisons the loss of those steps,
// once each (so a rolled-back run does not meet them again).
class FaultInjector {
 public:
  explicit FaultInjector(const std::string& spec);  // throws naming a malformed entry
  // Returns the loss to report for this step (NaN, a spike, or `loss` unchanged).
  double apply(int64_t step, double loss, double* grad_norm);
  // "kill@STEP:rRANK" (default rank 0): that rank dies by SIGKILL as it starts that step, in
  // the first attempt of the job only (restart_count 0), as a kill -9 from outside would.
  void kill_if_due(int64_t step, int rank, int64_t restart_count) const;

 private:
  struct Kill {
    int64_t step;
    int rank;
  };
  std::vector<Kill> kills_;
  struct Fault {
    int64_t step;
    bool nan;
    bool fired = false;
  };
  std::vector<Fault> faults_;
};

}  // namespace moe
