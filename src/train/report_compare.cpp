// `moe report A B C ...`: several runs on one chart (validation loss, and the training loss
// averaged over windows), the first run the baseline, and a table of each run's last
// validation loss and its gap to the baseline's. Made for A/B comparisons such as compressed
// gradients against fp32 (README, "Training over slow networks").
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/safetensors.h"  // write_file_atomic
#include "train/report.h"
#include "train/svg_chart.h"

namespace moe {

namespace {

const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// step -> value, the last record of a step winning (a resumed run repeats steps).
template <class R>
std::map<int64_t, double> by_step(const std::vector<R>& recs, Metric R::*field) {
  std::map<int64_t, double> m;
  for (const R& r : recs)
    if ((r.*field).has_value()) m[r.step] = *(r.*field);
  return m;
}

}  // namespace

RunComparison compare_runs(const std::vector<std::string>& run_dirs,
                           const std::vector<std::string>& labels, int64_t window) {
  MOE_CHECK(run_dirs.size() >= 2, "report", "a comparison needs at least two run folders, got ",
            run_dirs.size());
  MOE_CHECK(labels.empty() || labels.size() == run_dirs.size(), "report", "--labels has ",
            labels.size(), " names for ", run_dirs.size(), " run folders; give one per run");
  MOE_CHECK(window >= 1, "report", "--window ", window, " must be at least 1 step");
  RunComparison out;
  svg::LineChart val, train;
  val.id = "compare-val";
  val.title = "validation loss";
  val.y_label = "loss";
  train.id = "compare-train";
  train.title = "training cross-entropy (mean over " + std::to_string(window) + " steps)";
  train.y_label = "cross-entropy";
  double base = NAN;
  for (size_t i = 0; i < run_dirs.size(); ++i) {
    const std::string label =
        labels.empty() ? std::filesystem::path(run_dirs[i]).filename().string() : labels[i];
    const RunMetrics m =
        read_metrics((std::filesystem::path(run_dirs[i]) / "metrics.jsonl").string());
    const auto v = by_step(m.val, &ValRecord::loss);
    MOE_CHECK(!v.empty(), "report", run_dirs[i], "/metrics.jsonl has no validation record; ",
              "train with [train] eval_every > 0 or eval_tokens > 0");
    svg::Series sv;
    sv.name = label;
    sv.color = kColors[i % 10];
    sv.markers = true;
    for (const auto& [step, loss] : v) sv.x.push_back(double(step)), sv.y.push_back(loss);
    val.series.push_back(sv);
    svg::Series st;
    st.name = label;
    st.color = kColors[i % 10];
    double sum = 0;
    int64_t n = 0;
    for (const auto& [step, ce] : by_step(m.train, &TrainRecord::ce)) {
      sum += ce, ++n;
      if (step % window == 0) {
        st.x.push_back(double(step)), st.y.push_back(sum / double(n));
        sum = 0, n = 0;
      }
    }
    train.series.push_back(st);
    const auto last = *v.rbegin();
    if (i == 0) base = last.second;
    RunComparison::Row row{label, last.first, last.second, (last.second - base) / base};
    out.rows.push_back(row);
  }
  out.svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + svg::render_line_chart(val);
  out.train_svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + svg::render_line_chart(train);
  return out;
}

std::string format_comparison(const RunComparison& c) {
  int w = 3;  // the label column fits the longest label
  for (const auto& r : c.rows) w = std::max(w, int(r.label.size()));
  char line[512];
  std::snprintf(line, sizeof line, "%-*s %14s %10s   gap to %s\n", w, "run", "last val step",
                "val loss", c.rows.front().label.c_str());
  std::string s = line;
  for (const auto& r : c.rows) {
    std::snprintf(line, sizeof line, "%-*s %14lld %10.4f %+10.2f%%\n", w, r.label.c_str(),
                  static_cast<long long>(r.step), r.val_loss, 100 * r.gap);
    s += line;
  }
  return s;
}

}  // namespace moe
