#include "train/guards.h"

#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <sstream>

#include "core/error.h"

namespace moe {

Verdict SpikeGuard::check(int64_t step, double loss, double grad_norm, std::string* why) {
  std::ostringstream s;
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    if (cfg_.skip_nonfinite) {
      s << "non-finite " << (std::isfinite(loss) ? "gradient norm" : "loss") << " (loss "
        << loss << ", grad norm " << grad_norm << "): step skipped";
      *why = s.str();
      return Verdict::kSkipNonFinite;
    }
    MOE_FAIL("train", "loss ", loss, " / grad norm ", grad_norm, " at step ", step,
             " is not finite; lower [optim] lr or enable [guard] skip_nonfinite");
  }
  const auto n = static_cast<int64_t>(window_.size());
  if (cfg_.spike_zscore > 0 && n >= cfg_.spike_min_history) {
    double mean = 0, var = 0;
    for (double v : window_) mean += v;
    mean /= double(n);
    for (double v : window_) var += (v - mean) * (v - mean);
    const double sd = std::sqrt(var / double(n - 1));
    const double z = sd > 0 ? (loss - mean) / sd : (loss > mean ? HUGE_VAL : 0.0);
    if (z > cfg_.spike_zscore) {
      // Forget spikes that left the window, then count this one.
      while (!spike_steps_.empty() && spike_steps_.front() <= step - cfg_.spike_window)
        spike_steps_.erase(spike_steps_.begin());
      spike_steps_.push_back(step);
      s << "loss spike " << loss << " (z = " << z << " over the last " << n << " steps, mean "
        << mean << ", sd " << sd << ")";
      if (int64_t(spike_steps_.size()) >= cfg_.max_spikes) {
        s << "; " << spike_steps_.size() << " spikes within " << cfg_.spike_window << " steps";
        *why = s.str();
        return Verdict::kRollback;
      }
      s << ": update skipped";
      *why = s.str();
      return Verdict::kSkipSpike;
    }
  }
  window_.push_back(loss);
  if (int64_t(window_.size()) > cfg_.spike_window) window_.erase(window_.begin());
  return Verdict::kAccept;
}

FaultInjector::FaultInjector(const std::string& spec) {
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t at = item.find('@');
    const std::string kind = item.substr(0, at);
    MOE_CHECK(at != std::string::npos && (kind == "nan" || kind == "spike" || kind == "kill"),
              "config", "[log] fault_inject entry '", item,
              "' is not nan@STEP, spike@STEP or kill@STEP:rRANK");
    int64_t step = -1, rank = 0;
    const size_t colon = item.find(":r", at);
    try {
      step = std::stoll(item.substr(at + 1, colon == std::string::npos ? std::string::npos
                                                                        : colon - at - 1));
      if (colon != std::string::npos) rank = std::stoll(item.substr(colon + 2));
    } catch (const std::exception&) {
      step = -1;
    }
    MOE_CHECK(step >= 0 && rank >= 0, "config", "[log] fault_inject entry '", item,
              "' has no valid step (or rank)");
    if (kind == "kill") {
      kills_.push_back({step, int(rank)});
    } else {
      faults_.push_back({step, kind == "nan"});
    }
  }
}

void FaultInjector::kill_if_due(int64_t step, int rank, int64_t restart_count) const {
  if (restart_count != 0) return;
  for (const Kill& k : kills_)
    if (k.step == step && k.rank == rank) ::kill(::getpid(), SIGKILL);
}

double FaultInjector::apply(int64_t step, double loss, double* grad_norm) {
  for (auto& f : faults_) {
    if (f.step != step || f.fired) continue;
    f.fired = true;
    if (f.nan) {
      *grad_norm = NAN;
      return NAN;
    }
    return loss * 4.0 + 10.0;  // far outside any healthy window
  }
  return loss;
}

}  // namespace moe
