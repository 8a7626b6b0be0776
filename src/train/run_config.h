// A training run in one TOML file (torchtitan style): sections [model] [data] [train] [optim]
// [checkpoint] [guard] [parallel] [log]; any key can be overridden on the command line as
// `--train.steps 200`. Unknown keys, wrong types and out-of-range values are errors naming the
// file, line, key and what is allowed.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "parallel/parallel.h"
#include "train/trainer.h"

namespace moe {

struct RunConfig {
  ModelConfig model;         // [model]: config.json keys inline, or `config = "path.json"`
  std::string model_origin;  // where the model config came from, for messages
  DataConfig data;           // [data]
  TrainConfig train;         // [train] [optim] [checkpoint] [guard] [log]
  ParallelConfig parallel;   // [parallel]: dp x ep ranks (moe launch, mpirun, srun)
  // "section.key" -> where it was set: "configs/small.toml:12" or "command line --model.x".
  std::map<std::string, std::string> where;
  // "configs/small.toml:12" style place of a key, or "" if it kept its default.
  std::string where_of(const std::string& dotted) const {
    const auto it = where.find(dotted);
    return it == where.end() ? "" : it->second;
  }
};

// One `--section.key value` from the command line.
using Override = std::pair<std::string, std::string>;

// path empty: the defaults (the tiny model on the built-in corpus), then the overrides.
RunConfig load_run_config(const std::string& path, const std::vector<Override>& overrides = {});

// Splits leftover arguments ("--train.steps", "200" or "--train.steps=200") into overrides;
// throws naming an argument that is not of that form.
std::vector<Override> parse_overrides(const std::vector<std::string>& args);

// The whole resolved config as TOML (written into every run folder as run.toml).
std::string run_config_to_toml(const RunConfig& rc);

// Every key of the non-model sections with its default and meaning, for `moe train --help-config`.
std::string run_config_reference();

}  // namespace moe
