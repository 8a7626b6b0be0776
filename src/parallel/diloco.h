// DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language
// Models"; as in OpenDiLoCo and torchtitan's local SGD): the job's ranks form groups that train
// alone (inner AdamW, the synchronous dp x ep of parallel.h inside each group) and meet every
// H = [parallel] inner_steps optimizer steps:
//
//   delta   = theta_global - theta_local          the pseudo-gradient of this group (per value)
//   delta   = mean over groups of delta            all_reduce over the cross-group communicator
//   m       = mu * m + delta                       outer Nesterov SGD, PyTorch's
//   theta_global -= lr * (delta + mu * m)          SGD(momentum=mu, nesterov=True, dampening=0)
//   theta_local   = theta_global                   every group starts the next round from it
//
// Each rank keeps theta_global and m only for the arena ranges its optimizer owns (its ZeRO-1
// shard in the group), so each rank all-reduces 1/(ranks per group) of the model with the
// ranks of the same index in the other groups, and the group's parameter all-gather
// (Parallel::gather_params) then spreads the new values. The
// balancing biases are in the arena and are treated like every other value. The inner AdamW
// moments stay per group.
//
// [parallel] outer_comm_dtype = "int8" sends the pseudo-gradients as INT8 with a scale per 128
// values (comm/compression.h; about 1/4 of the bytes), without error feedback: the rounding of
// one sync is not carried to the next, so no per-rank residual has to be checkpointed
// (Streaming DiLoCo, Douillard et al. 2025, quantizes outer gradients to 4 bits without it).
//
// The trainer syncs after steps H, 2H, ... and after the run's last step, so the final model
// is one model; checkpoints are written only at syncs (trainer.cpp), where every group holds
// theta_global, and carry m and every group's AdamW moments (checkpoint_state()).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/model.h"
#include "parallel/parallel.h"

namespace moe {

// The outer optimizer step on n values, in place: m = mu*m + delta; theta -= lr*(delta + mu*m)
// (fp32, as torch.optim.SGD(nesterov=True) computes it on f32 tensors).
void outer_nesterov_step(float* theta, float* momentum, const float* delta, int64_t n, float lr,
                         float mu);

struct OuterSyncStats {
  double seconds = 0;            // the whole outer step, the largest over the job's ranks
  double comm_seconds = 0;       // of which the cross-group all-reduce (largest over ranks)
  int64_t bytes = 0;             // pseudo-gradient each rank all-reduces (fp32 values x 4)
  int64_t sent_bytes = 0;        // bytes a rank sent for it on the wire (largest over ranks)
  int64_t inter_host_bytes = 0;  // of which to other hosts (largest over ranks)
  double delta_norm = 0;         // L2 norm of the averaged pseudo-gradient over the model
  double update_norm = 0;        // L2 norm of theta_global's change
};

// What a checkpoint carries beside the model and the AdamW moments of group 0: the outer
// momentum and the moments of groups 1.. (full layout, on rank 0).
struct DilocoCheckpoint {
  std::vector<float> momentum;                       // [full total_numel]
  std::vector<std::vector<float>> group_m, group_v;  // groups 1.., [full total_numel] each
  std::map<std::string, std::string> metadata;       // groups, group_ranks, inner_steps, ...
  // DiLoCo::kFile's tensors: outer_momentum, group{g}.exp_avg, group{g}.exp_avg_sq (g >= 1).
  std::vector<TensorRef> tensors() const;
};

class DiLoCo {
 public:
  static constexpr const char* kFile = "diloco.safetensors";  // in each checkpoint folder

  // par: attached to the model, in diloco mode.
  explicit DiLoCo(Parallel& par);

  int64_t inner_steps() const { return H_; }
  // Whether an outer sync follows the step that brings the run to `done` of `total` steps.
  bool due(int64_t done, int64_t total) const { return done % H_ == 0 || done == total; }

  // theta_global := this rank's owned parameters (the run's start, or after a resume).
  void reset(const Model& model);
  // The outer step, after the inner optimizer updated this rank's shard and before
  // Parallel::gather_params spreads it (collective over the job). `step`: steps done.
  OuterSyncStats sync(Model& model, int64_t step);

  // Checkpoint (collective over the job): full is this group's Parallel::gather_full (complete
  // on each group's rank 0). Complete on rank 0, empty elsewhere.
  DilocoCheckpoint checkpoint_state(const FullTrainTensors& full);
  // Resume, on every rank: the outer momentum, and this rank's group's AdamW moments put into
  // full.m / full.v before Parallel::load_full. dir: the checkpoint folder; a checkpoint of a
  // sync run (no kFile) starts the outer momentum at zero with group 0's moments everywhere.
  // Returns what was loaded, for the log.
  std::string load(const std::string& dir, FullTrainTensors& full);

 private:
  void pack(const float* params, std::vector<float>& out) const;  // owned ranges -> packed
  void dump(const std::string& path,
            const std::vector<std::pair<std::string, const std::vector<float>*>>& t);

  Parallel& par_;
  int64_t H_ = 1;
  float lr_ = 0, mu_ = 0;
  bool int8_ = false;                            // outer_comm_dtype
  std::vector<float> theta_, momentum_, delta_;  // this rank's owned ranges back to back
  // Packed ranges [begin, end) of the balancing biases (e_score_correction_bias): not trained
  // by gradients (a buffer in Hugging Face's DeepSeek-V3), so the outer step averages them
  // instead of applying Nesterov momentum, which would carry a correction on for many syncs
  // after the loads it answered were balanced.
  std::vector<std::pair<int64_t, int64_t>> averaged_;
  std::string dump_dir_;  // MOE_TEST_DILOCO_DUMP: tests read each sync's inputs and outputs
};

}  // namespace moe
