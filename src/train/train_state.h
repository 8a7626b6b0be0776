// Resumable checkpoints: everything a run needs to continue bit for bit.
//
//   RUN/checkpoints/step_00000040/
//     config.json  model.safetensors    the model (HF names; balancing biases included)
//     optimizer.safetensors             AdamW exp_avg and exp_avg_sq over the parameter arena
//     train_state.json                  step, data offset, lr scale, guard history, counters
//     tokenizer.json                    (BPE runs) the tokenizer the data was made with
//     diloco.safetensors                (DiLoCo runs) outer momentum, other groups' moments
//     MANIFEST.json                     size and CRC-32C of each file above; written last
//
// A checkpoint is built in a temporary folder, every file fsynced, then renamed into place and
// the parent fsynced: a crash leaves either the old set of checkpoints or the new one. A folder
// without a MANIFEST, or whose files do not match it, is not valid and is skipped on resume.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace moe {

struct TrainState {
  int64_t step = 0;         // the next step to run
  int64_t data_offset = 0;  // added to the step when drawing batches (moves past rolled-back data)
  double lr_scale = 1.0;    // lowered by rollbacks
  int64_t rollbacks = 0;
  int64_t skipped = 0;      // steps skipped by the guards so far
  int64_t tokens = 0;       // training tokens consumed
  double elapsed_s = 0;     // wall time spent training before this checkpoint
  std::vector<double> loss_window;  // the guard's recent accepted losses, oldest first
  std::vector<int64_t> spike_steps; // steps of recent spikes
  int64_t data_train_tokens = -1;   // size of the train stream batches are drawn from (-1: unknown)
};

// Writes RUN/checkpoints/step_XXXXXXXX and deletes the oldest beyond `keep`. Returns its path.
// tokenizer_json: a tokenizer.json to copy into it ("" for the byte tokenizer).
std::string save_train_checkpoint(const std::string& run_dir, const Model& model,
                                  const AdamW& opt, const TrainState& st, int64_t keep,
                                  const std::string& tokenizer_json = "");

// "" if dir is a complete checkpoint whose files match its MANIFEST, else what is wrong.
std::string check_train_checkpoint(const std::string& dir);

// Valid checkpoints of a run, newest first; invalid ones are listed in `skipped` with the reason.
std::vector<std::string> list_train_checkpoints(const std::string& run_dir,
                                                std::vector<std::string>* skipped = nullptr);

// Loads a checkpoint into model, optimizer and state; the model's config must match.
void load_train_checkpoint(const std::string& dir, Model& model, AdamW& opt, TrainState* st);

// One more safetensors file in a checkpoint (covered by its manifest), e.g. DiLoCo's outer state.
struct CheckpointFile {
  std::string name;  // e.g. "diloco.safetensors"
  std::vector<TensorRef> tensors;
  std::map<std::string, std::string> metadata;
};

// The same two for the logical state of any layout of ranks: parameters and AdamW moments in
// the full layout (make_layout(cfg)), e.g. gathered from the ranks of a distributed job.
std::string save_train_checkpoint(const std::string& run_dir, const ModelConfig& cfg,
                                  const float* params, const float* m, const float* v,
                                  int64_t adam_step, const TrainState& st, int64_t keep,
                                  const std::string& tokenizer_json = "",
                                  const std::vector<CheckpointFile>& extra = {});
void load_train_checkpoint(const std::string& dir, const ModelConfig& cfg,
                           std::vector<float>* params, std::vector<float>* m,
                           std::vector<float>* v, int64_t* adam_step, TrainState* st);

}  // namespace moe
