// moe report RUN_DIR [--out FILE]: one self-contained HTML page (inline SVG, no scripts, no
// network) with the run's curves, expert-load heatmaps and events, from RUN_DIR/metrics.jsonl.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "train/report.h"

void add_report_commands(CLI::App& app) {
  struct Options {
    std::string run_dir;  // "runs/small"
    std::string out;      // "" = RUN_DIR/report.html
  };
  auto opt = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "report", "write an HTML report (curves, expert-load heatmaps, events) of a training run");
  sub->add_option("run_dir", opt->run_dir, "run folder holding metrics.jsonl")->required();
  sub->add_option("--out", opt->out, "output file (default: RUN_DIR/report.html)");
  sub->callback([opt] {
    const std::string path = moe::write_report(opt->run_dir, opt->out);
    std::printf("%s\n", path.c_str());
  });
}
