// moe report RUN_DIR [--out FILE]: one self-contained HTML page (inline SVG, no scripts, no
// network) with the run's curves, expert-load heatmaps and events, from RUN_DIR/metrics.jsonl.
// moe report RUN_A RUN_B ... [--labels a,b,...] [--out FILE.svg]: the runs compared (the
// first is the baseline): validation loss in FILE.svg, training loss in FILE-train.svg, and
// a table of last validation losses and gaps on stdout.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"  // write_file_atomic
#include "train/report.h"

void add_report_commands(CLI::App& app) {
  struct Options {
    std::vector<std::string> run_dirs;  // "runs/small"
    std::string out;                    // "" = RUN_DIR/report.html, or compare.svg
    std::vector<std::string> labels;    // comparison: "fp32,int8+ef"
    int64_t window = 50;                // comparison: steps per training-loss point
  };
  auto opt = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "report",
      "write an HTML report (curves, expert-load heatmaps, events) of a training run, or compare "
      "several runs (loss curves as SVG and a table of validation-loss gaps)");
  sub->add_option("run_dir", opt->run_dirs,
                  "run folder holding metrics.jsonl; several: compare them (the first is the "
                  "baseline)")
      ->required();
  sub->add_option("--out", opt->out,
                  "output file (default: RUN_DIR/report.html; comparison: compare.svg)");
  sub->add_option("--labels", opt->labels, "comparison: one name per run, comma separated")
      ->delimiter(',');
  sub->add_option("--window", opt->window, "comparison: training steps averaged per point");
  sub->callback([opt] {
    if (opt->run_dirs.size() == 1) {
      const std::string path = moe::write_report(opt->run_dirs[0], opt->out);
      std::printf("%s\n", path.c_str());
      return;
    }
    const moe::RunComparison c = moe::compare_runs(opt->run_dirs, opt->labels, opt->window);
    const std::filesystem::path out = opt->out.empty() ? "compare.svg" : opt->out;
    std::filesystem::path train = out;
    train.replace_filename(out.stem().string() + "-train" + out.extension().string());
    moe::write_file_atomic(out.string(), {{c.svg.data(), c.svg.size()}});
    moe::write_file_atomic(train.string(), {{c.train_svg.data(), c.train_svg.size()}});
    std::printf("%s", moe::format_comparison(c).c_str());
    std::printf("validation loss: %s\ntraining loss: %s\n", out.c_str(), train.c_str());
  });
}
