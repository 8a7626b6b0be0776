// `moe report`: reads a run's metrics.jsonl and renders one self-contained HTML page (inline
// SVG, no scripts, no network) with loss, validation loss, learning rate, throughput and
// gradient-norm curves, per-MoE-layer balance, router-entropy, capacity-drop and bias curves,
// expert-load heatmaps per MoE layer, and the run's events. The page is
// well-formed XHTML, so it opens in a browser and parses as XML.
//
// metrics.jsonl holds one JSON object per line, each with a "kind":
//   run    {"params", "active_params", "model": {...}, "train": {...}, "started"}
//   train  {"step", "loss", "ce", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens", "time_s"}
//   val    {"step", "loss", "ppl"}
//   moe    {"step", "layer", "load": [E], "max_over_mean", "min_over_mean", "router_entropy",
//           "dropped_frac", "bias": [E]} (router_entropy: mean over tokens of the entropy of
//           the normalized router scores; dropped_frac: of this layer's routed slots)
//   event  {"step", "event": "skip_nonfinite" | "skip_spike" | "rollback" | "checkpoint" |
//           "resume" | "interrupted", "detail"}
// Unknown kinds and fields are ignored. A non-finite value may be written as null (what
// nlohmann::json writes for NaN), as a string ("nan", "inf", "-inf") or as a bare nan/inf token.
// Steps that repeat after a rollback or resume replace the earlier ones; the undone points
// are drawn faded.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moe {

using Metric = std::optional<double>;  // absent if the record lacks the field; NaN if non-finite

struct TrainRecord {
  int64_t step = 0;
  Metric loss, ce, lr, grad_norm, tokens_per_s, mfu, tokens, time_s;
};

struct ValRecord {
  int64_t step = 0;
  Metric loss, ppl;
};

struct MoeRecord {
  int64_t step = 0;
  int64_t layer = 0;
  std::vector<double> load;  // [E] assignments per expert
  Metric max_over_mean, min_over_mean, router_entropy, dropped_frac;
  std::vector<double> bias;  // [E] balancing bias (may be empty)
};

struct EventRecord {
  int64_t step = 0;
  std::string event;   // e.g. "rollback"
  std::string detail;  // free text
};

struct RunMetrics {
  std::string path;    // the metrics.jsonl read
  nlohmann::json run;  // the "run" record (null if absent)
  std::vector<TrainRecord> train;
  std::vector<ValRecord> val;
  std::vector<MoeRecord> moe;
  std::vector<EventRecord> events;
  int64_t lines = 0;               // records read
  int64_t unknown_kinds = 0;       // records of a kind this version does not know (ignored)
  bool partial_last_line = false;  // the file ends in an unterminated line that does not parse
                                   // (the trainer is writing it); it was ignored
};

// Throws moe::Error naming the file and line of a malformed record.
RunMetrics read_metrics(const std::string& path);

// The HTML page; `title` heads it (e.g. the run folder).
std::string render_report(const RunMetrics& m, const std::string& title);

// Reads run_dir/metrics.jsonl and renders it.
std::string render_report(const std::string& run_dir);

// Renders run_dir's report and writes it atomically to out_path (default run_dir/report.html).
// Returns the path written.
std::string write_report(const std::string& run_dir, const std::string& out_path = "");

// `moe report A B ...`: the runs' validation-loss curves on one chart (svg) and their training
// cross-entropy averaged over `window` steps on another (train_svg), and per run its last
// validation loss and the relative gap to the first run's. Throws naming a folder without
// metrics or validation records.
struct RunComparison {
  struct Row {
    std::string label;
    int64_t step = 0;     // of the last validation record
    double val_loss = 0;
    double gap = 0;       // (val_loss - first run's) / first run's
  };
  std::vector<Row> rows;
  std::string svg, train_svg;  // standalone SVG documents
};
RunComparison compare_runs(const std::vector<std::string>& run_dirs,
                           const std::vector<std::string>& labels, int64_t window = 50);
std::string format_comparison(const RunComparison& c);  // the table, one line per run

}  // namespace moe
