// Run metrics as JSON lines (RUN/metrics.jsonl; `moe report` draws them) and the progress line.
//
// Records, one object per line, each with "kind":
//   run    {params, active_params, model{...}, train{...}, started}
//   train  {step, loss, ce, lr, grad_norm, tokens_per_s, mfu, tokens, time_s}
//   val    {step, loss, ppl}
//   moe    {step, layer, load[E], max_over_mean, min_over_mean, router_entropy, dropped_frac,
//           bias[E]}   (load summed over the log interval; router_entropy is the entropy of the
//           load distribution over experts, in nats; ln E when balanced)
//   event  {step, event: skip_nonfinite|skip_spike|rollback|checkpoint|resume|interrupted,
//           detail}
#pragma once

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace moe {

class MetricsLog {
 public:
  MetricsLog() = default;
  // Appends to path (created with its folder); "" = disabled.
  explicit MetricsLog(const std::string& path);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void write(const nlohmann::json& record);  // one line, flushed
  void event(int64_t step, const std::string& event, const std::string& detail);

 private:
  FILE* f_ = nullptr;
};

// A live line rewritten in place on a terminal, or plain lines otherwise.
class Progress {
 public:
  // "auto", "plain", "none" (messages only), "silent" (nothing: ranks other than 0)
  explicit Progress(const std::string& mode);
  void update(const std::string& line, bool keep);  // keep: also leave it in the scrollback
  void message(const std::string& line);            // a line of its own (events, results)
  void finish();

 private:
  bool live_ = false, quiet_ = false, silent_ = false, dirty_ = false;
};

}  // namespace moe
