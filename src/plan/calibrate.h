// `moe plan --calibrate`: measure this machine's kernel rates (GEMM, grouped expert GEMM,
// attention, elementwise bandwidth, AdamW) with the engine's own kernels, write them as a
// cluster file, predict the step time of the bench-moe model with the cost model, and time
// the real forward_backward + AdamW step of that model for comparison.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/presets.h"  // bench_moe_config: the model --calibrate runs
#include "plan/cost.h"

namespace moe::plan {

struct CalibrateOptions {
  int threads = 2;      // OpenMP threads for every measurement, e.g. 2
  int reps = 5;         // timed repetitions of the full step (best of), e.g. 5
  int64_t batch = 8;    // sequences
  int64_t seq = 512;    // tokens per sequence
  // Fit: scale the compute efficiencies by predicted / measured forward+backward, so the cost
  // model reproduces this model's measured step (what the kernel rates miss: routing,
  // bookkeeping, small-shape overheads). For predicting runs of this model's shapes.
  bool fit = false;
  // Each device of the written cluster gets this share of the measured threads (ranks that
  // oversubscribe the cores, e.g. 0.5 for 4 single-thread ranks on 2 cores): peaks, memory and
  // shared-memory bandwidth scale by it. Applied after the comparison, which is at share 1.
  double share = 1.0;
  // Time by the process's CPU clock instead of the wall clock: on a busy machine a one-thread
  // calibration then measures what a core does, not the share the scheduler gave it.
  bool cpu_clock = false;
};

struct Calibration {
  Cluster cluster;                 // this machine, rates as measured
  std::vector<std::string> lines;  // one per measurement, for printing
  Time predicted;                  // cost model for the bench model on `cluster`
  double measured_fwd_bwd = 0;     // seconds, best of reps
  double measured_adamw = 0;       // seconds
  double measured_step = 0;        // fwd_bwd + adamw
  double fit_factor = 1;           // with fit: the efficiencies' scale (predicted / measured)
  Time fitted;                     // with fit: the prediction after it (share 1)
};

Calibration calibrate(const ModelConfig& cfg, const CalibrateOptions& o);

}  // namespace moe::plan
