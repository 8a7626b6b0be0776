// A trainer run config (configs/*.toml, the file `moe train --config` reads) as the planner sees
// it: the model of [model], the job of [train] and the layout items of [parallel], so
// `moe plan --model configs/small.toml` predicts the step the trainer runs from the same file.
// Only the keys the cost model needs are read; the trainer checks the rest.
#pragma once

#include <cstdint>
#include <string>

#include "plan/model_spec.h"

namespace moe::plan {

struct RunSpec {
  PlanModel model;
  std::string origin;   // the file, for messages
  int64_t batch = 0;    // [train] batch: the GLOBAL micro-batch in sequences, e.g. 32
  int64_t accum = 1;    // [train] accum: micro-batches per step
  int64_t seq_len = 0;  // [train] seq_len, e.g. 128
  int64_t ranks = 0;    // [parallel] dp * ep when dp is set, else 0 (the job gives it)
  // Layout items of [parallel] (parse_layout's syntax), e.g. "ep=4,gradcomm=int8,diloco=50".
  std::string layout;
};

// True for a run config (a .toml file) rather than a config.json.
bool is_run_config(const std::string& path);
// [model] is either inline config.json keys or `config = "path.json"` (relative to the file)
// with inline keys over it; `model_set` ("key=value,...", moe plan --model-set) goes last.
RunSpec load_run_spec(const std::string& path, const std::string& model_set = "");
RunSpec parse_run_spec(const std::string& toml_text, const std::string& origin,
                       const std::string& model_set = "");

// The layout items of the trainer running `r` on `devices` ranks: fp32 compute, ZeRO-1, each
// rank reading batch / devices sequences of every micro-batch (batch = global_batch / accum;
// global_batch 0 = the file's batch * accum), then r.layout. Throws like the trainer when the
// batch does not split evenly.
std::string run_layout(const RunSpec& r, int64_t devices, int64_t global_batch = 0);

}  // namespace moe::plan
