// `moe plan`: size and lay out a MoE training run on a cluster (src/plan).
//   moe plan --model configs/models/deepseek_v3.json --cluster configs/clusters/h800.toml
//            --devices 2048 --global-batch 15360 --seq 4096 [--tokens 14.8e12] [--top 10]
//            [--dtype bf16|fp8|any] [--layout tp=1,pp=16,...] [--explain] [--json]
//            [--inter-bw-scale 0.25] [--what-if-inter-bw 0.25]
//   moe plan --calibrate [--out configs/clusters/this_machine.toml] [--reps 5]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "plan/calibrate.h"
#include "plan/report.h"
#include "plan/search.h"

namespace {

using namespace moe::plan;

struct PlanArgs {
  std::string model, cluster, dtype = "bf16", layout, out;
  Job job;
  size_t top = 10;
  bool explain = false, json = false, calibrate = false;
  double inter_scale = 1.0, what_if = 0.0;
  int reps = 5, threads = 2;
};

SearchOptions options_of(const PlanArgs& a) {
  SearchOptions o;
  o.keep = a.top;
  if (a.dtype == "bf16") o.dtypes = {Dtype::kBf16};
  else if (a.dtype == "fp8") o.dtypes = {Dtype::kFp8};
  else if (a.dtype == "any") o.dtypes = {Dtype::kBf16, Dtype::kFp8};
  else if (a.dtype == "fp32") o.dtypes = {Dtype::kFp32};
  else MOE_FAIL("plan", "--dtype ", a.dtype, ": allowed bf16, fp8, fp32, any");
  return o;
}

void run_calibrate(const PlanArgs& a) {
  CalibrateOptions o;
  o.threads = a.threads;
  o.reps = a.reps;
  std::printf("moe plan --calibrate: bench-moe (vocab 256, hidden 512, 6 layers, 8 heads x 64, "
              "16 experts x 512 top-2 + 1 shared), batch %lld x seq %lld, fp32, %d threads\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.seq), o.threads);
  std::fflush(stdout);
  const Calibration r = calibrate(moe::bench_moe_config(), o);
  for (const auto& l : r.lines) std::printf("  %s\n", l.c_str());
  const Time& t = r.predicted;
  std::printf("predicted step %.3f s = fwd %.3f (dense %.3f, experts %.3f, head %.3f, attention "
              "%.3f, elementwise %.3f) + bwd %.3f + AdamW %.3f\n",
              t.step, t.fwd, t.fwd_dense, t.fwd_expert, t.fwd_head, t.fwd_attn, t.fwd_mem, t.bwd,
              t.optimizer);
  std::printf("measured  step %.3f s = forward_backward %.3f + AdamW %.3f (best of %d)\n",
              r.measured_step, r.measured_fwd_bwd, r.measured_adamw, o.reps);
  std::printf("predicted / measured = %.3f (%+.1f%%)\n", t.step / r.measured_step,
              100.0 * (t.step / r.measured_step - 1.0));
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    MOE_CHECK(f.good(), "plan", "cannot write ", a.out, "; check the directory exists");
    f << cluster_to_toml(r.cluster,
                         "# This machine, measured by `moe plan --calibrate` with the engine's own "
                         "kernels.\n# peak = best fp32 GEMM rate seen (large square shape); "
                         "efficiencies are rates at the\n# bench-moe shapes over that peak. "
                         "Network values are assumptions (one process, no NIC measured).\n");
    std::printf("wrote %s\n", a.out.c_str());
  }
}

void print_search(const PlanModel& m, const Cluster& c, const PlanArgs& a, const char* title) {
  const SearchResult r = search(m, c, a.job, options_of(a));
  std::printf("%s\n%s", title, header_text(m, c, a.job).c_str());
  std::printf("%lld layouts can run the job, %lld fit in memory; best %zu by tokens/s/device:\n",
              static_cast<long long>(r.considered), static_cast<long long>(r.fit), r.top.size());
  std::printf("%s", table_text(r.top, a.job).c_str());
  if (a.explain && !r.top.empty())
    std::printf("\nbest layout in full:\n%s", explain_text(m, c, a.job, r.top.front()).c_str());
}

void run_plan(const PlanArgs& a) {
  MOE_CHECK(!a.model.empty() && !a.cluster.empty(), "plan",
            "--model and --cluster are required (or use --calibrate)");
  MOE_CHECK(a.job.devices >= 1 && a.job.global_batch >= 1 && a.job.seq >= 1, "plan",
            "--devices, --global-batch and --seq must be >= 1");
  const PlanModel m = load_plan_model(a.model);
  Cluster c = load_cluster(a.cluster);
  if (a.inter_scale != 1.0) c = scale_inter_bandwidth(c, a.inter_scale);

  if (!a.layout.empty()) {  // one given layout
    Layout l = parse_layout(a.layout);
    std::string why;
    MOE_CHECK(complete_layout(m, c, a.job, l, &why), "plan", "--layout ", a.layout,
              " cannot run this job: ", why);
    const Candidate x = evaluate(m, c, a.job, l);
    if (a.json) {
      std::printf("%s", candidates_json(m, c, a.job, {x}).c_str());
      return;
    }
    std::printf("%s%s", header_text(m, c, a.job).c_str(), explain_text(m, c, a.job, x).c_str());
    return;
  }
  if (a.json) {
    const SearchResult r = search(m, c, a.job, options_of(a));
    std::printf("%s", candidates_json(m, c, a.job, r.top).c_str());
    return;
  }
  if (a.what_if <= 0) {
    print_search(m, c, a, "");
    return;
  }
  const Cluster slow = scale_inter_bandwidth(c, a.what_if);
  print_search(m, c, a, "== as given ==");
  std::printf("\n");
  print_search(m, slow, a, "== fragmented: inter-node bandwidth scaled ==");
  const SearchOptions o = options_of(a);
  const SearchResult r0 = search(m, c, a.job, o), r1 = search(m, slow, a.job, o);
  if (!r0.top.empty() && !r1.top.empty()) {
    std::printf("\nwhy the best layout moved:\n");
    for (const auto& s : explain_change(m, c, slow, a.job, r0.top.front(), r1.top.front()))
      std::printf("  %s\n", s.c_str());
  }
}

}  // namespace

void add_plan_commands(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* p = app.add_subcommand("plan", "cost model and parallel-layout search for a MoE run on "
                                       "a cluster; --calibrate measures this machine");
  p->add_option("--model", a->model, "model config.json (configs/models/*.json)");
  p->add_option("--cluster", a->cluster, "cluster TOML (configs/clusters/*.toml)");
  p->add_option("--devices", a->job.devices, "accelerators in the job")->capture_default_str();
  p->add_option("--global-batch", a->job.global_batch, "sequences per optimizer step")
      ->capture_default_str();
  p->add_option("--seq", a->job.seq, "tokens per sequence")->capture_default_str();
  p->add_option("--tokens", a->job.tokens, "training budget in tokens, e.g. 14.8e12");
  p->add_option("--top", a->top, "layouts shown")->capture_default_str();
  p->add_option("--dtype", a->dtype, "compute dtype searched: bf16, fp8, fp32 or any")
      ->capture_default_str();
  p->add_option("--layout", a->layout,
                "evaluate one layout, e.g. tp=1,pp=16,ep=64,mb=1,sched=dualpipe,"
                "recompute=selective,zero=1,dtype=fp8,nodelimit=1");
  p->add_flag("--explain", a->explain, "print the full breakdown of the best layout");
  p->add_flag("--json", a->json, "machine-readable output");
  p->add_option("--inter-bw-scale", a->inter_scale, "multiply inter-node bandwidth (what-if)")
      ->check(CLI::PositiveNumber);
  p->add_option("--what-if-inter-bw", a->what_if,
                "also search with inter-node bandwidth scaled by this and explain the change")
      ->check(CLI::PositiveNumber);
  p->add_flag("--calibrate", a->calibrate, "measure this machine's kernels and compare the "
                                           "predicted and measured bench-moe step");
  p->add_option("--out", a->out, "with --calibrate: write this machine's cluster TOML here");
  p->add_option("--reps", a->reps, "with --calibrate: timed steps (best of)")->capture_default_str();
  p->add_option("--calibrate-threads", a->threads, "with --calibrate: OpenMP threads")
      ->capture_default_str();
  p->callback([a] {
    if (a->calibrate) run_calibrate(*a);
    else run_plan(*a);
  });
}
