#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "kernels/cpu/peak.h"
#include "model/checkpoint.h"
#include "model/flops.h"
#include "parallel/diloco.h"
#include "parallel/parallel.h"
#include "train/guards.h"
#include "train/metrics.h"
#include "train/routing_log.h"
#include "train/train_state.h"

namespace moe {

double lr_at(const TrainConfig& tc, int64_t step) {
  if (tc.warmup > 0 && step < tc.warmup)
    return tc.lr * static_cast<double>(step + 1) / static_cast<double>(tc.warmup);
  const double floor = tc.lr * tc.min_lr_ratio;
  if (tc.schedule == "constant") return tc.lr;
  if (tc.schedule == "wsd") {  // warmup, stable, then linear decay over the last decay_frac
    const double decay_steps = std::max(1.0, tc.decay_frac * double(tc.steps));
    const double into = double(step) - (double(tc.steps) - decay_steps);
    if (into <= 0) return tc.lr;
    return tc.lr + (floor - tc.lr) * std::min(1.0, into / decay_steps);
  }
  const double span = std::max<int64_t>(1, tc.steps - tc.warmup);
  const double progress = std::min(1.0, static_cast<double>(step - tc.warmup) / span);
  return floor + 0.5 * (tc.lr - floor) * (1.0 + std::cos(M_PI * progress));
}

void sample_batch(int32_t* tokens, const std::vector<int32_t>& data, int64_t B, int64_t T,
                  uint64_t seed, int64_t step, int64_t micro) {
  const int64_t span = static_cast<int64_t>(data.size()) - T - 1;
  MOE_CHECK(span >= 0, "data", "the token stream has ", data.size(),
            " tokens, fewer than one window of ", T + 1, "; use more data or a shorter seq_len");
  static const uint64_t stream = stream_id("data.windows");
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t idx = (static_cast<uint64_t>(step) << 24) ^
                         (static_cast<uint64_t>(micro) << 12) ^ static_cast<uint64_t>(b);
    const int64_t start = std::min<int64_t>(
        span, static_cast<int64_t>(uniform01(seed, stream, idx) * static_cast<double>(span + 1)));
    std::copy(data.begin() + start, data.begin() + start + T + 1, tokens + b * (T + 1));
  }
}

double evaluate_windows(Model& model, int64_t windows, int64_t T, int64_t batch,
                        const std::function<void(int32_t*, int64_t, int64_t)>& fill,
                        int64_t* tokens_out, MtpEval* mtp) {
  double sum = 0;
  int64_t count = 0;
  std::vector<int32_t> buf(static_cast<size_t>(batch * (T + 1)));
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t nb = std::min(batch, windows - w0);
    fill(buf.data(), w0, nb);
    const LossStats st = model.forward(buf.data(), nb, T);
    sum += st.ce * static_cast<double>(nb * T);
    if (mtp) mtp->add(st);
    count += nb * T;
  }
  model.reset_load();
  if (tokens_out) *tokens_out = count;
  return count ? sum / static_cast<double>(count) : 0.0;
}

double evaluate(Model& model, const std::vector<int32_t>& data, int64_t T, int64_t batch,
                int64_t max_tokens, int64_t* tokens_out, MtpEval* mtp) {
  const int64_t windows = (static_cast<int64_t>(data.size()) - 1) / T;
  int64_t use = windows;
  if (max_tokens > 0) use = std::min(use, std::max<int64_t>(1, max_tokens / T));
  return evaluate_windows(model, use, T, batch, consecutive_windows(data, T), tokens_out, mtp);
}

std::function<void(int32_t*, int64_t, int64_t)> consecutive_windows(
    const std::vector<int32_t>& data, int64_t T) {
  return [&data, T](int32_t* buf, int64_t first, int64_t n) {
    for (int64_t b = 0; b < n; ++b)
      std::copy(data.begin() + (first + b) * T, data.begin() + (first + b) * T + T + 1,
                buf + b * (T + 1));
  };
}

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs SIGINT/SIGTERM handlers for the duration of a run and restores the old ones.
struct StopSignals {
  struct sigaction old_int{}, old_term{};
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa{};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string duration_str(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<long long>(s + 0.5);
  if (t >= 3600) return fmt("%lldh%02lldm", t / 3600, t / 60 % 60);
  if (t >= 60) return fmt("%lldm%02llds", t / 60, t % 60);
  return fmt("%llds", t);
}

std::string iso_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

nlohmann::json train_config_json(const TrainConfig& tc) {
  return {{"steps", tc.steps},       {"batch", tc.batch},         {"seq_len", tc.seq_len},
          {"accum", tc.accum},       {"seed", tc.seed},           {"lr", tc.lr},
          {"schedule", tc.schedule}, {"warmup", tc.warmup},       {"grad_clip", tc.grad_clip},
          {"weight_decay", tc.adamw.weight_decay}};
}

}  // namespace

TrainResult train(Model& model, const TokenData& data, const TrainConfig& tc, Parallel* par_in) {
  MOE_CHECK(tc.steps > 0 && tc.batch > 0 && tc.seq_len > 0 && tc.accum > 0, "train",
            "steps, batch, seq_len and accum must be positive");
  namespace fs = std::filesystem;
  const int64_t B = tc.batch, T = tc.seq_len;
  const ModelConfig& cfg = model.config();
  // One process gets a Parallel of one rank: every call below is then a no-op or a copy.
  std::unique_ptr<Parallel> own_par;
  if (!par_in) {
    own_par = std::make_unique<Parallel>(nullptr, ParallelConfig{}, cfg);
    own_par->attach(model);
  }
  Parallel& par = par_in ? *par_in : *own_par;
  const bool lead = par.rank() == 0;  // writes files and prints
  const int64_t Bl = par.local_batch(B);
  AdamW opt(model.layout(), tc.adamw, par.owned());
  TrainState st;
  SpikeGuard guard(tc.guard);
  FaultInjector faults(tc.fault_inject);
  const bool has_dir = !tc.out_dir.empty();
  MetricsLog metrics(lead && has_dir && tc.metrics
                         ? (fs::path(tc.out_dir) / "metrics.jsonl").string()
                         : "");
  Progress progress(lead ? tc.progress : "silent");
  TrainResult r;
  // DiLoCo: groups of ranks train alone and meet every inner_steps steps (parallel/diloco.h).
  // Checkpoints hold one model, so they are written at outer syncs only.
  std::unique_ptr<DiLoCo> diloco;
  if (par.diloco()) {
    const int64_t H = par.config().inner_steps;
    MOE_CHECK(tc.ckpt_every % H == 0, "train", "[checkpoint] every = ", tc.ckpt_every,
              " is not a multiple of [parallel] inner_steps = ", H,
              ": DiLoCo writes checkpoints only at outer syncs, where every group holds the same "
              "parameters; use every = ", (tc.ckpt_every / H + 1) * H, " or another multiple of ",
              H);
    diloco = std::make_unique<DiLoCo>(par);
  }
  // Loads a checkpoint into this rank's part of the model and optimizer (and DiLoCo's state:
  // this group's AdamW moments, the outer momentum); returns what DiLoCo loaded.
  auto restore = [&](const std::string& dir) {
    par.wait_params();
    FullTrainTensors full;
    int64_t adam_step = 0;
    load_train_checkpoint(dir, cfg, &full.params, &full.m, &full.v, &adam_step, &st);
    const std::string outer = diloco ? diloco->load(dir, full) : "";
    par.load_full(full, model, opt);
    opt.set_steps(adam_step);
    if (diloco) diloco->reset(model);
    return outer;
  };
  // BPE runs keep the tokenizer beside the model (the run folder is also the final model
  // folder) and in every checkpoint, so `moe eval` and `moe generate` decode the same ids.
  const std::string tokenizer_json = data.tokenizer_spec == "byte" ? "" : data.tokenizer_spec;
  if (lead && has_dir && !tokenizer_json.empty()) {
    std::filesystem::create_directories(tc.out_dir);
    std::ifstream src(tokenizer_json, std::ios::binary);
    MOE_CHECK(src.good(), "train", "cannot read the tokenizer ", tokenizer_json);
    const std::string text((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
    write_file_atomic((fs::path(tc.out_dir) / "tokenizer.json").string(), {{text.data(), text.size()}});
  }

  // Resume: the newest checkpoint whose files match its manifest. A job restarted by the
  // launcher after a rank died always resumes.
  if (tc.restart_count > 0)
    metrics.event(-1, "elastic_restart",
                  "attempt " + std::to_string(tc.restart_count) + " of the job after a rank failed");
  if ((tc.resume || tc.restart_count > 0) && has_dir) {
    std::vector<std::string> skipped;
    const std::vector<std::string> valid = list_train_checkpoints(tc.out_dir, &skipped);
    for (const auto& s : skipped) {
      progress.message("resume: skipping invalid checkpoint " + s);
      metrics.event(-1, "resume", "skipped invalid checkpoint " + s);
    }
    if (!valid.empty()) {
      const std::string outer = restore(valid.front());
      if (!outer.empty()) progress.message("resume: " + outer);
      MOE_CHECK(st.data_train_tokens < 0 || st.data_train_tokens == data.train_tokens(), "train",
                "resume: ", valid.front(), " was trained on a stream of ", st.data_train_tokens,
                " train tokens but ", data.name, " has ", data.train_tokens(),
                "; batches would differ. Resume with the same [data] source, tokenizer and "
                "val_fraction, or start a new run folder");
      guard.window() = st.loss_window;
      guard.spike_steps() = st.spike_steps;
      progress.message(fmt("resume: continuing from %s (step %lld of %lld)", valid.front().c_str(),
                           static_cast<long long>(st.step), static_cast<long long>(tc.steps)));
      metrics.event(st.step, "resume", valid.front());
    } else {
      progress.message("resume: no valid checkpoint in " + tc.out_dir + "/checkpoints; starting fresh");
    }
  }
  if (diloco) diloco->reset(model);  // theta_global: the parameters every group starts from
  // ZeRO-1: the AdamW moments each rank keeps (about 1/dp of one process's), for the log.
  std::vector<int64_t> opt_bytes(size_t(par.world_size()), 0);
  opt_bytes[size_t(par.rank())] = par.optimizer_bytes(opt);
  par.all_reduce_sum(opt_bytes.data(), opt_bytes.size());
  if (st.step == 0) {
    const ParamCounts pc = count_params(cfg);
    nlohmann::json run = {{"kind", "run"},
                          {"params", pc.total},
                          {"active_params", pc.active},
                          {"model", nlohmann::json::parse(config_to_json(cfg))},
                          {"train", train_config_json(tc)},
                          {"data", data.name},
                          {"tokenizer", data.tokenizer_spec},
                          {"train_tokens", data.train_tokens()},
                          {"val_tokens", data.val_tokens()},
                          {"ranks", par.world_size()},
                          {"dp", par.dp()},
                          {"ep", par.ep()},
                          {"optimizer_bytes", opt_bytes},
                          {"optimizer_bytes_one_process", 8 * make_layout(cfg).total_numel},
                          {"mode", par.config().mode},
                          {"started", iso_now()}};
    if (diloco) {
      run["inner_steps"] = diloco->inner_steps();
      run["groups"] = par.groups();
      run["group_ranks"] = par.group_ranks();
      run["outer_lr"] = par.config().outer_lr;
      run["outer_momentum"] = par.config().outer_momentum;
      run["outer_comm_dtype"] = par.config().outer_comm_dtype;
    }
    metrics.write(run);
  }

  const double flops_per_token = train_flops_per_token(cfg, T);
  // Measured once here; a busy machine can make that probe read low, so it is measured again
  // (keeping the best) whenever the achieved rate would exceed it.
  double peak = cpu::measure_fp32_peak_flops(0.2);
  const int64_t tokens_per_step = tc.accum * B * T;
  std::vector<int32_t> tokens(static_cast<size_t>(B * (T + 1)));  // the global micro-batch
  const int32_t* my_tokens = tokens.data() + par.batch_first(B) * (T + 1);  // (Bl, T+1)
  StopSignals signals;
  const auto t_start = std::chrono::steady_clock::now();
  auto t_log = t_start;
  const int64_t first_step = st.step;
  const double base_elapsed = st.elapsed_s;
  double ce_window = 0, loss_last = 0, gnorm_last = 0;
  double step_seconds = 0;  // compute and communication of the steps of this log interval
  int64_t window_steps = 0;
  double window_outer_s = 0;  // DiLoCo outer syncs of this log interval (largest over ranks)
  int64_t window_outer = 0;
  std::vector<MoeLayerStats> window_moe, step_moe;  // routing statistics: log interval, step

  // Collective: every rank hands its part to rank 0, which writes the logical model.
  auto checkpoint = [&](const char* why) {
    if (!has_dir) return;
    st.loss_window = guard.window();
    st.spike_steps = guard.spike_steps();
    st.elapsed_s = base_elapsed +
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    st.data_train_tokens = data.train_tokens();
    const FullTrainTensors full = par.gather_full(model, opt);  // on each group's rank 0
    DilocoCheckpoint outer;
    if (diloco) outer = diloco->checkpoint_state(full);
    if (!lead) return;
    std::vector<CheckpointFile> extra;
    if (diloco) extra.push_back({DiLoCo::kFile, outer.tensors(), outer.metadata});
    const std::string dir =
        save_train_checkpoint(tc.out_dir, cfg, full.params.data(), full.m.data(), full.v.data(),
                              opt.steps(), st, tc.ckpt_keep, tokenizer_json, extra);
    metrics.event(st.step, "checkpoint", dir);
    if (std::string(why) != "periodic") progress.message(std::string("checkpoint: ") + dir);
  };
  // DiLoCo's outer step after the inner step that brought the run to `done` steps (collective
  // over the job; before the group's parameter all-gather spreads this rank's shard).
  auto outer_sync = [&](int64_t done) {
    if (!diloco || !diloco->due(done, tc.steps)) return false;
    const OuterSyncStats s = diloco->sync(model, done);
    window_outer_s += s.seconds;
    ++window_outer;
    metrics.write({{"kind", "diloco_sync"},
                   {"step", done},
                   {"seconds", s.seconds},
                   {"comm_s", s.comm_seconds},
                   {"bytes_per_rank", s.bytes},
                   {"sent_bytes_per_rank", s.sent_bytes},
                   {"inter_host_bytes_per_rank", s.inter_host_bytes},
                   {"groups", par.groups()},
                   {"pseudo_grad_norm", s.delta_norm},
                   {"update_norm", s.update_norm}});
    return true;
  };
  const bool has_mtp = model.config().num_nextn_predict_layers > 0;
  auto validate = [&]() {
    if (tc.eval_tokens <= 0 || data.val_tokens() < T + 1) return -1.0;
    par.wait_params();
    int64_t n = 0;
    MtpEval mtp;
    // DiLoCo: every rank evaluates its slice of the windows with its group's parameters; right
    // after an outer sync (and at the end) they are one model's, between syncs the mean mixes
    // the groups' models (each group 1/groups of the windows). "synced" says which.
    const double ce = evaluate(model, data, T, B, tc.eval_tokens, &n, &par, has_mtp ? &mtp : nullptr);
    nlohmann::json rec = {{"kind", "val"}, {"step", st.step}, {"loss", ce}, {"ppl", std::exp(ce)}};
    if (has_mtp && mtp.positions > 0) {
      rec["mtp_acc"] = mtp.acc();
      rec["mtp_agree"] = mtp.agreement();
      rec["mtp_ce"] = mtp.ce_sum / double(mtp.positions);
      r.val_mtp_acc = mtp.acc();
      r.val_mtp_agree = mtp.agreement();
    }
    if (diloco) rec["synced"] = diloco->due(st.step, tc.steps);
    metrics.write(rec);
    std::string line = fmt("held-out: ce %.4f nats/token over %lld tokens", ce,
                           static_cast<long long>(n));
    if (data.entropy_floor >= 0)
      line += fmt(" | entropy floor %.4f | gap %.4f", data.entropy_floor, ce - data.entropy_floor);
    line += fmt(" | perplexity %.3f", std::exp(ce));
    if (has_mtp && mtp.positions > 0)
      line += fmt(" | MTP next-next token: right %.1f%%, = main model's %.1f%%, ce %.4f",
                  100 * mtp.acc(), 100 * mtp.agreement(), mtp.ce_sum / double(mtp.positions));
    progress.message(line);
    return ce;
  };

  while (st.step < tc.steps) {
    const int64_t step = st.step;
    model.zero_grads();
    LossStats sum;
    step_moe.clear();
    faults.kill_if_due(step, par.rank(), tc.restart_count);
    const auto t_step = std::chrono::steady_clock::now();
    for (int64_t m = 0; m < tc.accum; ++m) {
      // Every rank draws the global micro-batch and trains on its slice of it.
      sample_train_batch(tokens.data(), data, B, T, tc.seed, step + st.data_offset, m);
      if (m == tc.accum - 1) par.arm_overlap(model);  // buckets reduce as backward finishes them
      const LossStats s =
          model.forward_backward(my_tokens, Bl, T, 1.0f / static_cast<float>(tc.accum));
      sum.loss += s.loss / double(tc.accum);
      sum.ce += s.ce / double(tc.accum);
      sum.dropped += s.dropped;
      accumulate(step_moe, model.moe_stats());
    }
    par.finish_grads(model);  // this rank's shard of the gradient, averaged over the group
    const double gsq = par.grad_norm_sq();  // (the group: the job, or its DiLoCo group)
    // The loss over the whole job, whether any rank was asked to stop, and the groups' gradient
    // norms: every rank must take the same decisions below, or the collectives of the next step
    // would not match.
    double job[5] = {sum.loss, sum.ce, double(sum.dropped), double(g_stop_signal != 0), gsq};
    par.all_reduce_sum(job, 5);
    sum.loss = job[0] / par.world_size(), sum.ce = job[1] / par.world_size();
    sum.dropped = int64_t(job[2]);
    const bool stop_requested = job[3] > 0;
    // Clipping takes the group's norm; the guards and the log take the root mean square over the
    // groups (the same value in sync mode).
    const double gnorm_group = std::sqrt(gsq);
    double gnorm = par.groups() > 1 ? std::sqrt(job[4] / par.world_size()) : gnorm_group;
    const double observed = faults.apply(step, sum.loss, &gnorm);
    std::string why;
    const Verdict verdict = guard.check(step, observed, gnorm, &why);
    r.losses.push_back(observed);

    if (verdict == Verdict::kAccept) {
      if (tc.grad_clip > 0 && gnorm_group > tc.grad_clip)
        par.scale_shard_grads(static_cast<float>(tc.grad_clip / gnorm_group));
      accumulate(window_moe, step_moe);
      par.reduce_load(model);  // the balancing bias moves by the loads of the group (job)
      model.update_balance_biases();  // (before the all-gather below writes the parameters)
      opt.step(model.params().data(), par.shard_grads(), lr_at(tc, step) * st.lr_scale);
      outer_sync(step + 1);      // DiLoCo, every inner_steps steps
      par.gather_params(model);  // ZeRO-1: every rank gets the shards the others updated
      ce_window += sum.ce;
      ++window_steps;
      loss_last = sum.loss, gnorm_last = gnorm;
      ++st.step;
      st.tokens += tokens_per_step;
    } else if (verdict == Verdict::kRollback) {
      model.reset_load();
      metrics.event(step, "rollback", why);
      const std::vector<std::string> valid = has_dir ? list_train_checkpoints(tc.out_dir)
                                                     : std::vector<std::string>{};
      TrainState now = st;
      if (!valid.empty()) {
        restore(valid.front());
        guard.window() = st.loss_window;
        // Fresh data from here on: skip the batches between the checkpoint and this step.
        st.data_offset = now.data_offset + (step + 1 - st.step);
        progress.message(fmt("guard: %s: rolled back to %s, lr x%.3g", why.c_str(),
                             valid.front().c_str(), now.lr_scale * tc.guard.rollback_lr_factor));
      } else {
        ++st.step;  // nothing to return to: drop this step and go on at a lower lr
        progress.message("guard: " + why + ": no checkpoint to roll back to; lowering lr");
        if (outer_sync(st.step)) par.gather_params(model);
      }
      guard.clear_spikes();
      st.lr_scale = now.lr_scale * tc.guard.rollback_lr_factor;
      st.rollbacks = now.rollbacks + 1;
      st.skipped = now.skipped + 1;
      st.tokens = now.tokens;
      ++r.rollbacks;
      continue;
    } else {
      model.reset_load();
      metrics.event(step, verdict == Verdict::kSkipSpike ? "skip_spike" : "skip_nonfinite", why);
      progress.message(fmt("guard: step %lld: %s", static_cast<long long>(step + 1), why.c_str()));
      ++st.step;
      ++st.skipped;
      ++r.skipped;
      if (outer_sync(st.step)) par.gather_params(model);
    }

    // The whole step: forward, backward, gradient sync, optimizer, parameter all-gather.
    step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_step).count();
    const bool last = st.step == tc.steps;
    if ((st.step % tc.log_every == 0 || last) && window_steps > 0) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double tps = double(window_steps * tokens_per_step) / dt;
      // Per rank: peak is one process's. Only rank 0 prints MFU, so only it probes again (a
      // probe stalls the rank for 0.2 s).
      const double tps_rank = tps / par.world_size();
      if (lead && tps_rank * flops_per_token > peak)
        peak = std::max(peak, cpu::measure_fp32_peak_flops(0.2));
      const double mfu = tps_rank * flops_per_token / peak;
      // Communication the slowest rank waited for (the others wait for it in the next one).
      const CommTimes ct = par.take_comm_times();
      double waits[4] = {ct.grad_wait, ct.param_gather, ct.dispatch, step_seconds};
      par.all_reduce_max(waits, 4);
      // Bytes on the wire, summed over the ranks (net: to other hosts), per step.
      const Traffic tr = par.take_traffic();
      double bytes[6] = {tr.sent, tr.inter_host, tr.reduce_scatter, tr.all_gather, tr.all_to_all,
                         tr.all_reduce};
      par.all_reduce_sum(bytes, 6);
      for (double& b : bytes) b /= double(window_steps);
      const double comm_s = waits[0] + waits[1] + waits[2];
      reduce_window(par, window_moe);
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double eta = elapsed / double(st.step - first_step) * double(tc.steps - st.step);
      const double lr = lr_at(tc, st.step - 1) * st.lr_scale;
      r.final_train_ce = ce_window / double(window_steps);
      std::string line = fmt("step %5lld/%lld | loss %.4f | ce %.4f",
                             static_cast<long long>(st.step), static_cast<long long>(tc.steps),
                             loss_last, r.final_train_ce);
      if (data.entropy_floor >= 0)
        line += fmt(" (floor %.4f, gap %.4f)", data.entropy_floor,
                    r.final_train_ce - data.entropy_floor);
      line += fmt(" | grad norm %.3f | lr %.2e | %.0f tok/s", gnorm_last, lr, tps);
      if (par.distributed())
        line += fmt(" (%d ranks) | comm %.0f%%", par.world_size(),
                    waits[3] > 0 ? 100 * comm_s / waits[3] : 0.0);
      if (window_outer > 0) line += fmt(" | outer sync %.3fs", window_outer_s / window_outer);
      line += fmt(" | MFU %.1f%% | ETA %s", 100 * mfu, duration_str(eta).c_str());
      progress.update(line, true);
      nlohmann::json rec = {{"kind", "train"},
                            {"step", st.step},
                            {"loss", loss_last},
                            {"ce", r.final_train_ce},
                            {"lr", lr},
                            {"grad_norm", gnorm_last},
                            {"tokens_per_s", tps},
                            {"ranks", par.world_size()},
                            // per step, the largest over the ranks
                            {"step_s", waits[3] / double(window_steps)},
                            {"comm_exposed_s", comm_s / double(window_steps)},
                            {"grad_wait_s", waits[0] / double(window_steps)},
                            {"param_gather_s", waits[1] / double(window_steps)},
                            {"dispatch_s", waits[2] / double(window_steps)},
                            {"mfu", mfu},
                            {"tokens", st.tokens},
                            {"time_s", st.elapsed_s + elapsed}};
      if (par.distributed()) {
        rec["sent_bytes"] = bytes[0];
        rec["net_bytes"] = bytes[1];
        rec["net_bytes_reduce_scatter"] = bytes[2];
        rec["net_bytes_all_gather"] = bytes[3];
        rec["net_bytes_all_to_all"] = bytes[4];
        rec["net_bytes_all_reduce"] = bytes[5];
      }
      if (diloco) {  // the outer syncs of the interval (diloco_sync records give each)
        rec["outer_syncs"] = window_outer;
        rec["outer_sync_s"] = window_outer_s;
      }
      metrics.write(rec);
      write_moe_records(metrics, model, st.step, window_moe, par.ep());
      window_moe.clear();
      step_seconds = 0;
      window_outer_s = 0;
      window_outer = 0;
      t_log = now;
      ce_window = 0;
      window_steps = 0;
    }
    if (tc.eval_every > 0 && st.step % tc.eval_every == 0 && !last) validate();
    // Samples need every expert on this process: one process, or data parallelism alone.
    if (lead && par.ep() == 1 && tc.sample_every > 0 && st.step % tc.sample_every == 0 &&
        data.decode) {
      par.wait_params();
      GenerateOptions go;
      go.max_new_tokens = std::min<int64_t>(T, 120);
      go.seed = uint64_t(st.step);
      progress.message("sample at step " + std::to_string(st.step) + ": " +
                       data.decode(generate(model, data.sample_prompt, go)));
    }
    // DiLoCo: the groups hold one model right after an outer sync only, so stop_after stops at
    // the first sync from there (checkpoint.every is a multiple of inner_steps).
    const bool at_sync = !diloco || diloco->due(st.step, tc.steps);
    if (tc.ckpt_every > 0 && st.step % tc.ckpt_every == 0 && !last) checkpoint("periodic");
    if (tc.stop_after > 0 && st.step - first_step >= tc.stop_after && !last && at_sync) {
      progress.finish();
      checkpoint("stop_after");
      r.stopped = true;
      break;
    }
    if (stop_requested) {
      progress.finish();
      metrics.event(st.step, "interrupted", fmt("signal %d", int(g_stop_signal)));
      // Between DiLoCo syncs the groups' models differ: no checkpoint; --resume continues from
      // the newest one (at most checkpoint.every steps back), as after a crash.
      if (at_sync)
        checkpoint("interrupted");
      else
        progress.message(fmt("interrupted between DiLoCo outer syncs (step %lld): no checkpoint "
                             "written; --resume continues from the newest one",
                             static_cast<long long>(st.step)));
      r.interrupted = true;
      break;
    }
  }
  progress.finish();
  par.wait_params();
  const double run_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  r.steps_run = st.step - first_step;
  r.tokens_per_s = r.steps_run > 0 ? double(r.steps_run * tokens_per_step) / run_s : 0.0;
  r.skipped = st.skipped;
  r.rollbacks = st.rollbacks;
  if (r.interrupted || r.stopped) return r;

  r.val_ce = validate();
  if (has_dir) {
    checkpoint("final");
    if (lead) {
      // The final model is the newest checkpoint's model (gathered from every rank).
      FullTrainTensors full;
      TrainState final_state;
      int64_t adam_step = 0;
      const std::vector<std::string> valid = list_train_checkpoints(tc.out_dir);
      MOE_CHECK(!valid.empty(), "train", "the final checkpoint in ", tc.out_dir,
                "/checkpoints is not valid");
      load_train_checkpoint(valid.front(), cfg, &full.params, &full.m, &full.v, &adam_step,
                            &final_state);
      save_checkpoint(tc.out_dir, cfg, make_layout(cfg), full.params.data());
      progress.message("model: " + tc.out_dir);
    }
  }
  return r;
}

}  // namespace moe
