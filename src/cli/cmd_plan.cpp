// `moe plan`: size and lay out a MoE training run on a cluster (src/plan).
//   moe plan --model configs/models/deepseek_v3.json --cluster configs/clusters/h800.toml
//            --devices 2048 --global-batch 15360 --seq 4096 [--tokens 14.8e12] [--top 10]
//            [--dtype bf16|fp8|any] [--layout tp=1,pp=16,...] [--explain] [--json]
//            [--inter-bw-scale 0.25] [--what-if-inter-bw 0.25]
//   moe plan --model configs/small.toml --cluster configs/clusters/emulated_2x2_1gbit.toml
//            [--devices 4] [--layout gradcomm=int8,dispatch=fp8] [--model-set n_group=2]
//            (a run config: job and layout from its [train] and [parallel], --layout on top)
//   moe plan --calibrate [--out configs/clusters/this_machine.toml] [--reps 5]
//            [--model configs/small.toml --calibrate-batch 8 --calibrate-seq 128]
//            [--calibrate-fit] [--calibrate-share 0.5] [--calibrate-cpu-clock]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "plan/calibrate.h"
#include "plan/report.h"
#include "plan/run_spec.h"
#include "plan/search.h"

namespace {

using namespace moe::plan;

struct PlanArgs {
  std::string model, cluster, dtype = "bf16", layout, out, model_set;
  Job job;
  bool devices_given = false, batch_given = false, seq_given = false, dtype_given = false;
  size_t top = 10;
  bool explain = false, json = false, calibrate = false, search = false;
  double inter_scale = 1.0, what_if = 0.0;
  int reps = 5, threads = 2;
  int64_t cal_batch = 8, cal_seq = 0;
  bool cal_fit = false, cal_cpu_clock = false;
  double cal_share = 1.0;
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
  o.batch = a.cal_batch;
  o.fit = a.cal_fit;
  o.cpu_clock = a.cal_cpu_clock;
  MOE_CHECK(!o.cpu_clock || o.threads == 1, "plan", "--calibrate-cpu-clock needs "
            "--calibrate-threads 1 (the CPU clock adds up the threads' time)");
  o.share = a.cal_share;
  // The model timed: bench-moe by default, or any model the engine can run (no MLA or MTP).
  moe::ModelConfig cfg = moe::bench_moe_config();
  std::string name = "bench-moe";
  if (!a.model.empty()) {
    const PlanModel pm = is_run_config(a.model) ? load_run_spec(a.model, a.model_set).model
                                                : load_plan_model(a.model, a.model_set);
    MOE_CHECK(!pm.mla() && pm.mtp_modules() == 0, "plan", "--calibrate --model ", a.model,
              ": the engine has no MLA or multi-token prediction to time; pick a model "
              "it trains (configs/*.toml)");
    cfg = pm.cfg;
    name = a.model;
  }
  o.seq = a.cal_seq > 0 ? a.cal_seq : std::min<int64_t>(512, cfg.max_position_embeddings);
  MOE_CHECK(o.batch >= 1 && o.seq >= 1 && o.seq <= cfg.max_position_embeddings, "plan",
            "--calibrate-batch and --calibrate-seq must be >= 1, seq <= the model's "
            "max_position_embeddings = ", cfg.max_position_embeddings);
  std::printf("moe plan --calibrate: %s (vocab %lld, hidden %lld, %lld layers, %lld heads x %lld, "
              "%lld experts x %lld top-%lld + %lld shared), batch %lld x seq %lld, fp32, "
              "%d threads\n",
              name.c_str(), static_cast<long long>(cfg.vocab_size),
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_hidden_layers),
              static_cast<long long>(cfg.num_attention_heads), static_cast<long long>(cfg.head_dim),
              static_cast<long long>(cfg.n_routed_experts),
              static_cast<long long>(cfg.moe_intermediate_size),
              static_cast<long long>(cfg.num_experts_per_tok),
              static_cast<long long>(cfg.n_shared_experts), static_cast<long long>(o.batch),
              static_cast<long long>(o.seq), o.threads);
  std::fflush(stdout);
  const Calibration r = calibrate(cfg, o);
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
  if (o.fit)
    std::printf("fit: compute efficiencies x %.3f -> predicted step %.3f s (fwd+bwd %.3f)\n",
                r.fit_factor, r.fitted.step, r.fitted.fwd + r.fitted.bwd);
  if (o.share != 1.0)
    std::printf("written per device: %.3g of the measured rates (peak %.4g GFLOP/s, memory %.4g "
                "GB/s)\n", o.share, r.cluster.peak_fp32 / 1e9, r.cluster.memory_bandwidth / 1e9);
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    MOE_CHECK(f.good(), "plan", "cannot write ", a.out, "; check the directory exists");
    std::string note = "# This machine, measured by `moe plan --calibrate` with the engine's own "
                       "kernels.\n# peak = best fp32 GEMM rate seen (large square shape); "
                       "efficiencies are rates at the\n# " + name + " shapes over that peak. "
                       "Network values are assumptions (one process, no NIC measured).\n";
    char buf[256];
    if (o.fit) {
      std::snprintf(buf, sizeof buf, "# --calibrate-fit: efficiencies x %.3f so the measured "
                    "forward+backward (%.4f s) is reproduced.\n", r.fit_factor, r.measured_fwd_bwd);
      note += buf;
    }
    if (o.cpu_clock) note += "# --calibrate-cpu-clock: timed by CPU time (a busy machine).\n";
    if (o.share != 1.0) {
      std::snprintf(buf, sizeof buf, "# --calibrate-share %.3g: peaks, memory and intra "
                    "bandwidth are that share of the measured rates.\n", o.share);
      note += buf;
    }
    f << cluster_to_toml(r.cluster, note);
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

void run_plan(PlanArgs a) {
  MOE_CHECK(!a.model.empty() && !a.cluster.empty(), "plan",
            "--model and --cluster are required (or use --calibrate)");
  PlanModel m;
  std::string layout = a.layout, from;
  if (is_run_config(a.model)) {
    // A trainer run config: the job and the layout the trainer would run, unless given here.
    const RunSpec r = load_run_spec(a.model, a.model_set);
    m = r.model;
    if (!a.devices_given) {
      MOE_CHECK(r.ranks > 0, "plan", a.model, " does not fix the ranks ([parallel] dp unset); "
                "give --devices, e.g. --devices 4");
      a.job.devices = r.ranks;
    }
    if (!a.batch_given) a.job.global_batch = r.batch * r.accum;
    if (!a.seq_given) a.job.seq = r.seq_len;
    if (!a.dtype_given) a.dtype = "fp32";  // --search: the trainer computes in fp32
    if (!a.search) {
      from = run_layout(r, a.job.devices, a.job.global_batch);
      layout = a.layout.empty() ? from : from + "," + a.layout;
    }
  } else {
    m = load_plan_model(a.model, a.model_set);
  }
  MOE_CHECK(a.job.devices >= 1 && a.job.global_batch >= 1 && a.job.seq >= 1, "plan",
            "--devices, --global-batch and --seq must be >= 1");
  Cluster c = load_cluster(a.cluster);
  if (a.inter_scale != 1.0) c = scale_inter_bandwidth(c, a.inter_scale);

  if (!layout.empty()) {  // one given layout
    Layout l = parse_layout(layout);
    std::string why;
    MOE_CHECK(complete_layout(m, c, a.job, l, &why), "plan", "--layout ", layout,
              " cannot run this job: ", why);
    const Candidate x = evaluate(m, c, a.job, l);
    if (a.json) {
      std::printf("%s", candidates_json(m, c, a.job, {x}).c_str());
      return;
    }
    std::printf("%s", header_text(m, c, a.job).c_str());
    if (!from.empty())
      std::printf("layout items: %s (from %s)%s%s\n", from.c_str(), a.model.c_str(),
                  a.layout.empty() ? "" : " + --layout ", a.layout.c_str());
    std::printf("%s", explain_text(m, c, a.job, x).c_str());
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
  p->add_option("--model", a->model,
                "model config.json (configs/models/*.json), or a trainer run config "
                "(configs/*.toml: job and layout from its [train] and [parallel])");
  p->add_option("--model-set", a->model_set,
                "override model keys, e.g. n_group=2,topk_group=1 (node-limited routing)");
  p->add_option("--cluster", a->cluster, "cluster TOML (configs/clusters/*.toml)");
  auto* dev = p->add_option("--devices", a->job.devices, "accelerators (ranks) in the job")
                  ->capture_default_str();
  auto* gb = p->add_option("--global-batch", a->job.global_batch, "sequences per optimizer step")
                 ->capture_default_str();
  auto* seq = p->add_option("--seq", a->job.seq, "tokens per sequence")->capture_default_str();
  p->add_flag("--search", a->search,
              "with a run config: search layouts instead of evaluating the run's own");
  p->add_option("--tokens", a->job.tokens, "training budget in tokens, e.g. 14.8e12");
  p->add_option("--top", a->top, "layouts shown")->capture_default_str();
  auto* dt = p->add_option("--dtype", a->dtype, "compute dtype searched: bf16, fp8, fp32 or any "
                           "(fp32 with a run config)")
                 ->capture_default_str();
  p->add_option("--layout", a->layout,
                "evaluate one layout, e.g. tp=1,pp=16,ep=64,mb=1,sched=dualpipe,"
                "recompute=selective,zero=1,dtype=fp8,nodelimit=1; slow links: gradcomm="
                "fp32|bf16|int8, dispatch=fp32|bf16|fp8, combine=fp32|bf16, overlap=0|1, "
                "diloco=H, dilocogroup=N, outercomm=fp32|int8");
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
  p->add_option("--calibrate-batch", a->cal_batch,
                "with --calibrate: sequences timed (--model picks the model, default bench-moe)")
      ->capture_default_str();
  p->add_option("--calibrate-seq", a->cal_seq,
                "with --calibrate: tokens per sequence (default min(512, the model's maximum))");
  p->add_flag("--calibrate-fit", a->cal_fit,
              "with --calibrate: scale the written efficiencies so the model's measured step "
              "is reproduced (for predicting runs of that model)");
  p->add_flag("--calibrate-cpu-clock", a->cal_cpu_clock,
              "with --calibrate --calibrate-threads 1: time by CPU time, not wall time (a busy "
              "machine: what one core does when it runs)");
  p->add_option("--calibrate-share", a->cal_share,
                "with --calibrate: each device gets this share of the measured threads, e.g. "
                "0.5 for 4 one-thread ranks on 2 cores")
      ->check(CLI::Range(1e-3, 1.0))
      ->capture_default_str();
  p->callback([a, dev, gb, seq, dt] {
    a->dtype_given = dt->count() > 0;
    a->devices_given = dev->count() > 0;
    a->batch_given = gb->count() > 0;
    a->seq_given = seq->count() > 0;
    if (a->calibrate) run_calibrate(*a);
    else run_plan(*a);
  });
}
