// Training throughput of the fixed "bench-moe" config (issue #2, item 5): our engine against the
// PyTorch reference (tests/reference/bench_torch.py) on the same tokens, both on the same number
// of threads, with MFU against the machine's FP32 peak measured in this run and peak resident
// memory against the analytic need. A benchmark, not a test: it prints, it never fails on a time.
//
//   bench_train [--rounds 3] [--steps 4] [--warmup 2] [--torch-steps 2] [--torch-warmup 1]
//               [--threads 2] [--batch 8] [--seq 512] [--no-torch] [--source-dir DIR]
//
// The machine may be shared (other builds, other jobs), so the run is interleaved: after our
// warmup, each round runs `steps` of ours and then one PyTorch process (`torch-warmup` +
// `torch-steps` steps), and the ratio is of the medians over all rounds (each round's ratio is
// printed too). The FP32 peak is probed at the start and after every round; the best counts.
//
// bench-moe (the model of configs/bench-moe.toml): vocab 256, hidden 512, 6 layers, 8 heads (8 kv
// heads), head_dim 64, layer 0 dense (intermediate_size 1536), layers 1-5 MoE with 16 routed
// experts of width 512, 1 shared expert, top-2 sigmoid routing, auxiliary-loss-free bias rate
// 1e-3; seq 512, batch 8.
//
// One step, for both engines: zero gradients, forward + backward, AdamW, balancing-bias update.
// Times are medians over the measured steps.
//
// FLOPs per token (PaLM's convention, src/model/flops.h train_flops_per_token):
//   6 * (matmul weights a token passes through: q,k,v,o; the dense FFN or the router, the
//        shared expert and K routed experts; lm_head)  +  12 * L * H * Dh * T  (attention
//        scores and values, forward + backward, without the causal saving).
// MFU = tokens/s * FLOPs per token / peak, where the peak is an AVX-512 FMA loop on every
// thread (src/kernels/cpu/peak.h); the best oneDNN sgemm on a 2048^3 product is printed too.
//
// Analytic memory (bytes, fp32): 4 * P * 4 (parameters, gradients, Adam m and v) plus the
// activations this engine saves for backward (activation_floats() below lists them), plus the
// (B, T+1) tokens. Peak RSS is VmHWM, reset (clear_refs) after the peak probe and before the model
// is built, so it covers construction and training.
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/profile.h"
#include "data/corpus.h"
#include "kernels/cpu/peak.h"
#include "kernels/cpu/quantize.h"
#include "model/config.h"
#include "model/flops.h"
#include "model/model.h"
#include "model/presets.h"
#include "train/optimizer.h"

#ifndef MOE_SOURCE_DIR
#define MOE_SOURCE_DIR "."
#endif

namespace {

using namespace moe;
using Clock = std::chrono::steady_clock;

struct Options {
  int64_t rounds = 3;        // each round: our steps, then one PyTorch run
  int64_t steps = 4;         // measured steps of our engine per round
  int64_t warmup = 2;        // unmeasured steps first (primitive creation, first-touch pages)
  int64_t torch_steps = 2;   // measured steps per PyTorch run (each takes seconds)
  int64_t torch_warmup = 1;  // unmeasured steps per PyTorch run
  int threads = 2;
  int64_t batch = 8;
  int64_t seq = 512;
  bool torch = true;
  std::string dtype = "fp32";  // also run our engine in bf16 or fp8 and print the ratio to fp32
  bool profile = false;        // time the kernels by kind of work (core/profile.h)
  std::string source_dir = MOE_SOURCE_DIR;
};

void usage() {
  std::printf(
      "bench_train: bench-moe training throughput, ours vs PyTorch\n"
      "  --rounds N        rounds of (our steps, one PyTorch run) (default 3)\n"
      "  --steps N         measured steps of our engine per round (default 4)\n"
      "  --warmup N        warmup steps of our engine, once (default 2)\n"
      "  --torch-steps N   measured steps per PyTorch run (default 2)\n"
      "  --torch-warmup N  warmup steps per PyTorch run (default 1)\n"
      "  --threads N       OpenMP threads for both (default 2)\n"
      "  --batch N --seq N micro-batch shape (default 8 x 512)\n"
      "  --no-torch        skip the PyTorch run\n"
      "  --dtype D         bf16 or fp8: each round also runs our engine's steps with GEMMs in\n"
      "                    D (the same model, switched), ratio to our fp32 printed (default fp32)\n"
      "  --profile         time our steps' kernels by kind of work and print where a step's\n"
      "                    time goes (core/profile.h)\n"
      "  --source-dir DIR  project source (for tests/reference/bench_torch.py; default %s)\n",
      MOE_SOURCE_DIR);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      MOE_CHECK(i + 1 < argc, "bench_train", a, " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--rounds") o.rounds = std::stoll(next());
    else if (a == "--steps") o.steps = std::stoll(next());
    else if (a == "--warmup") o.warmup = std::stoll(next());
    else if (a == "--torch-steps") o.torch_steps = std::stoll(next());
    else if (a == "--torch-warmup") o.torch_warmup = std::stoll(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--batch") o.batch = std::stoll(next());
    else if (a == "--seq") o.seq = std::stoll(next());
    else if (a == "--no-torch") o.torch = false;
    else if (a == "--dtype") o.dtype = next();
    else if (a == "--profile") o.profile = true;
    else if (a == "--source-dir") o.source_dir = next();
    else if (a == "--help" || a == "-h") { usage(); std::exit(0); }
    else MOE_FAIL("bench_train", "unknown option ", a, "; see --help");
  }
  MOE_CHECK(o.rounds >= 1 && o.steps >= 1 && o.warmup >= 0 && o.torch_steps >= 1 &&
                o.torch_warmup >= 0 && o.threads >= 1 && o.batch >= 1 && o.seq >= 1,
            "bench_train", "rounds, steps, threads, batch and seq must be >= 1, warmups >= 0");
  return o;
}

// Floats of the activations the engine keeps from forward for backward, one micro-batch of
// N = B*T tokens (model.cpp LayerActs/Activations, moe_layer.h MoeCache), routing dropless so
// M = N*K expert rows: the residual stream (2L+1) N D; per layer the two RMSNorm outputs and
// rstds 2 (N D + N), q|k|v N Qd, attention probabilities B H T^2, attention output N H Dh;
// dense FFN gate|up and h N 3F; MoE router logits and scores 2 N E, top-k ids/weights/slot rows
// 3 N K, expert rows in and out 2 M D, gate|up and h M 3Fe, shared gate|up and h N 3 S Fe;
// final norm N D + N, logits (dlogits in place) N V, per-token losses and inputs/targets 3 N.
double activation_floats(const ModelConfig& c, int64_t B, int64_t T) {
  const double N = double(B) * T, D = c.hidden_size, L = c.num_hidden_layers;
  const double M = N * c.num_experts_per_tok;
  double f = (2 * L + 1) * N * D;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    f += 2 * (N * D + N) + N * c.qkv_dim() + double(B) * c.num_attention_heads * T * T +
         N * c.num_attention_heads * c.head_dim;
    if (c.is_moe_layer(l))
      f += 2 * N * c.n_routed_experts + 3 * N * c.num_experts_per_tok + 2 * M * D +
           3 * M * c.moe_intermediate_size + 3 * N * c.shared_width();
    else
      f += 3 * N * c.intermediate_size;
  }
  return f + N * D + N + N * c.vocab_size + 3 * N;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Peak resident set (VmHWM) in bytes; reset_peak_rss() starts a new peak (Linux clear_refs 5).
double peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024.0;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0;
}
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return bool(f);
}

// Best FLOP/s of oneDNN sgemm on an n x n x n product over a few runs (all threads).
double sgemm_peak_flops(int64_t n) {
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n, 0.0f);
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = Clock::now();
    dnnl_sgemm('N', 'N', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * double(n) * n * n / dt);
  }
  return best;
}

// The same windows bench_torch.py takes: step s reads stream[start, start + B(T+1)) with
// start = (s * B(T+1)) mod (len - B(T+1) + 1), as (B, T+1).
void torch_batch(std::vector<int32_t>& tokens, const std::string& stream, int64_t step,
                 int64_t B, int64_t T) {
  const int64_t n = B * (T + 1), len = int64_t(stream.size());
  const int64_t start = (step * n) % (len - n + 1);
  tokens.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<unsigned char>(stream[start + i]);
}

struct TorchResult {
  bool ok = false;
  std::vector<double> step_ms;  // measured steps (from its stderr lines "step i: X ms")
  double tokens_per_s = 0, step_ms_median = 0, peak_rss_mb = 0;  // its JSON line
  std::string info;             // its summary line (torch version, BLAS, environment)
  std::string error;
};

// One run of bench_torch.py: `warmup` + `steps` steps in a fresh process.
TorchResult run_torch(const Options& o, const std::string& cfg_path,
                      const std::string& token_file) {
  TorchResult r;
  const std::string script = o.source_dir + "/tests/reference/bench_torch.py";
  if (access(script.c_str(), R_OK) != 0) {
    r.error = "no " + script + " (pass --source-dir)";
    return r;
  }
  std::ostringstream cmd;
  cmd << "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 '" << script
      << "' --config '" << cfg_path << "' --batch " << o.batch << " --seq " << o.seq
      << " --steps " << o.torch_steps << " --warmup " << o.torch_warmup << " --threads "
      << o.threads << " --tokens '" << token_file << "' 2>&1";
  std::printf("running: %s\n", cmd.str().c_str());
  std::fflush(stdout);
  FILE* p = popen(cmd.str().c_str(), "r");
  if (!p) {
    r.error = "popen failed";
    return r;
  }
  std::string out, json;
  char buf[8192];
  while (fgets(buf, sizeof buf, p)) {
    const std::string line = buf;
    out += line;
    if (line.rfind("{", 0) == 0) json = line;
    if (line.rfind("[bench_torch] torch ", 0) == 0) r.info = line.substr(14);
    long long step = 0;
    double ms = 0;
    if (line.find("(warmup)") == std::string::npos &&
        std::sscanf(line.c_str(), "[bench_torch] step %lld: %lf ms", &step, &ms) == 2)
      r.step_ms.push_back(ms);
  }
  const int status = pclose(p);
  const auto j = nlohmann::json::parse(json, nullptr, false);
  if (status != 0 || json.empty() || j.is_discarded() || !j.contains("tokens_per_s")) {
    r.error = "bench_torch.py exited with status " + std::to_string(status) + ", output:\n" + out;
    return r;
  }
  r.ok = true;
  r.tokens_per_s = j["tokens_per_s"].get<double>();
  r.step_ms_median = j["step_ms_median"].get<double>();
  r.peak_rss_mb = j["peak_rss_mb"].get<double>();
  if (r.step_ms.empty()) r.step_ms.push_back(r.step_ms_median);
  return r;
}

std::string temp_file(const std::string& what, const std::string& bytes) {
  char path[] = "/tmp/bench_train_XXXXXX";
  const int fd = mkstemp(path);
  MOE_CHECK(fd >= 0, "bench_train", "cannot create a temporary file in /tmp for the ", what);
  const ssize_t n = write(fd, bytes.data(), bytes.size());
  close(fd);
  MOE_CHECK(n == ssize_t(bytes.size()), "bench_train", "short write of the ", what, " to ", path);
  return path;
}

int run(const Options& o) {
  omp_set_num_threads(o.threads);
  const ModelConfig cfg = bench_moe_config(o.seq);
  const int64_t B = o.batch, T = o.seq;
  const ParamCounts pc = count_params(cfg);
  const double flops_tok = train_flops_per_token(cfg, T);

  std::printf("bench-moe: V=%lld D=%lld L=%lld H=%lld Hkv=%lld Dh=%lld F=%lld E=%lld Fe=%lld "
              "S=%lld K=%lld %s, B=%lld T=%lld, %d threads\n",
              (long long)cfg.vocab_size, (long long)cfg.hidden_size,
              (long long)cfg.num_hidden_layers, (long long)cfg.num_attention_heads,
              (long long)cfg.num_key_value_heads, (long long)cfg.head_dim,
              (long long)cfg.intermediate_size, (long long)cfg.n_routed_experts,
              (long long)cfg.moe_intermediate_size, (long long)cfg.n_shared_experts,
              (long long)cfg.num_experts_per_tok, cfg.scoring_func.c_str(), (long long)B,
              (long long)T, o.threads);
  std::printf("parameters: %.2fM total, %.2fM active per token; %.1f MFLOP per trained token\n",
              pc.total / 1e6, pc.active / 1e6, flops_tok / 1e6);

  // The machine's FP32 peak: the best of a probe now and one after every round (other
  // processes on the machine can only lower a probe).
  std::vector<double> peaks{cpu::measure_fp32_peak_flops(0.5)};
  const double peak_gemm = sgemm_peak_flops(2048);

  // Tokens: the built-in corpus as bytes, one file both engines read (bench_torch.py --tokens).
  const int64_t per_step = B * (T + 1);
  const int64_t need = std::max(o.warmup + o.rounds * o.steps,
                                o.torch_warmup + o.torch_steps) * per_step;
  const std::string stream = make_builtin_corpus(1234, std::max<int64_t>(need + 1, 1 << 20)).text;
  const std::string tok_path = temp_file("tokens", stream);
  const std::string cfg_path = temp_file("config", config_to_json(cfg));

  // Our engine, built once; peak RSS restarts here (model, optimizer and training only).
  const bool rss_reset = reset_peak_rss();
  const double rss_before = peak_rss_bytes();
  Model model(cfg);
  model.init_weights(0);
  AdamWConfig ac;
  ac.lr = 1e-3;
  AdamW opt(model.layout(), ac);
  std::vector<int32_t> tokens;
  int64_t step = 0;
  const ComputeDtype low = parse_compute_dtype(o.dtype, "--dtype");
  const bool compare = low != ComputeDtype::kF32;
  if (compare && !cpu::bf16_native())
    std::printf("warning: no AVX-512 BF16 on this CPU (or MOE_NO_AVX512_BF16 set): %s GEMMs fall "
                "back to f32 arithmetic\n", o.dtype.c_str());
  // With --profile: per dtype, the kernels' seconds by part over the measured steps.
  std::map<ComputeDtype, prof::Totals> prof_sums;
  std::map<ComputeDtype, double> prof_step_s;
  std::map<ComputeDtype, int64_t> prof_steps;
  prof::enable(o.profile);
  bool measuring = false;
  // One full step: zero gradients, forward + backward, AdamW, balancing-bias update.
  auto train_step = [&](ComputeDtype dtype) {
    prof::reset();
    torch_batch(tokens, stream, step, B, T);
    model.set_compute_dtype(dtype);
    const auto t0 = Clock::now();
    model.zero_grads();
    const LossStats st = model.forward_backward(tokens.data(), B, T, 1.0f);
    opt.step(model.params().data(), model.grads().data(), ac.lr);
    model.update_balance_biases();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (o.profile && measuring) {
      const prof::Totals t = prof::totals();
      prof::Totals& sum = prof_sums[dtype];
      for (size_t i = 0; i < t.seconds.size(); ++i) {
        sum.seconds[i] += t.seconds[i];
        sum.calls[i] += t.calls[i];
      }
      prof_step_s[dtype] += dt;
      prof_steps[dtype] += 1;
    }
    std::printf("ours step %lld (%s): %.0f ms loss %.4f\n", (long long)step,
                compute_dtype_name(model.compute_dtype()), dt * 1e3, st.loss);
    std::fflush(stdout);
    ++step;
    return dt;
  };
  for (int64_t s = 0; s < o.warmup; ++s) train_step(ComputeDtype::kF32);
  for (int64_t s = 0; compare && s < o.warmup; ++s) train_step(low);

  measuring = true;
  // Rounds: ours (fp32, then --dtype), then PyTorch, so all see the same share of whatever else
  // the machine runs.
  std::vector<double> ours_ms, torch_ms, round_ratio, low_ms, low_ratio;
  TorchResult last;
  std::string torch_error;
  for (int64_t r = 0; r < o.rounds; ++r) {
    std::vector<double> mine;
    for (int64_t s = 0; s < o.steps; ++s) mine.push_back(train_step(ComputeDtype::kF32) * 1e3);
    ours_ms.insert(ours_ms.end(), mine.begin(), mine.end());
    if (compare) {
      std::vector<double> lows;
      for (int64_t s = 0; s < o.steps; ++s) lows.push_back(train_step(low) * 1e3);
      low_ms.insert(low_ms.end(), lows.begin(), lows.end());
      low_ratio.push_back(median(mine) / median(lows));
      std::printf("round %lld: ours fp32 %.0f ms, ours %s %.0f ms (medians): %.2fx\n",
                  (long long)r, median(mine), o.dtype.c_str(), median(lows), low_ratio.back());
    }
    if (o.torch && torch_error.empty()) {
      TorchResult tr = run_torch(o, cfg_path, tok_path);
      if (tr.ok) {
        torch_ms.insert(torch_ms.end(), tr.step_ms.begin(), tr.step_ms.end());
        round_ratio.push_back(median(tr.step_ms) / median(mine));
        std::printf("round %lld: ours %.0f ms, pytorch %.0f ms (medians): %.2fx\n",
                    (long long)r, median(mine), median(tr.step_ms), round_ratio.back());
        last = tr;
      } else {
        torch_error = tr.error;
      }
    }
    peaks.push_back(cpu::measure_fp32_peak_flops(0.5));
  }
  const double rss_peak = peak_rss_bytes();
  std::remove(tok_path.c_str());
  std::remove(cfg_path.c_str());

  const double peak = *std::max_element(peaks.begin(), peaks.end());
  const double ours_tps = double(B * T) / (median(ours_ms) * 1e-3);
  const double state_bytes = 4.0 * double(pc.total) * 4.0;
  const double act_bytes = activation_floats(cfg, B, T) * 4.0 + double(per_step) * 4.0;
  const double analytic = state_bytes + act_bytes;
  auto mfu = [&](double tps) { return 100.0 * tps * flops_tok / peak; };

  std::printf("\n== bench-moe training, fp32%s%s, %d threads, B=%lld T=%lld ==\n",
              compare ? " and " : "", compare ? o.dtype.c_str() : "", o.threads, (long long)B,
              (long long)T);
  std::printf("FP32 peak: %.1f GFLOP/s: AVX-%d FMA loop on %d threads, best of %zu probes "
              "(lowest %.1f); oneDNN sgemm 2048^3: %.1f GFLOP/s\n",
              peak / 1e9, cpu::fp32_vector_lanes() * 32, o.threads, peaks.size(),
              *std::min_element(peaks.begin(), peaks.end()) / 1e9, peak_gemm / 1e9);
  std::printf("model FLOPs: %.1f MFLOP/token (6 x %.2fM active matmul weights + attention)\n",
              flops_tok / 1e6, (flops_tok - 12.0 * cfg.num_hidden_layers *
                                                   cfg.num_attention_heads * cfg.head_dim * T) /
                                   6e6);
  std::printf("%-8s %9s %14s %10s %8s %12s %s\n", "engine", "tok/s", "step ms (med)", "GFLOP/s",
              "MFU", "peak RSS MB", "steps");
  std::printf("%-8s %9.1f %14.1f %10.1f %7.1f%% %12.0f %zu after %lld warmup\n", "moe.cpp",
              ours_tps, median(ours_ms), ours_tps * flops_tok / 1e9, mfu(ours_tps),
              rss_peak / 1048576.0, ours_ms.size(), (long long)o.warmup);
  if (compare) {
    const double low_tps = double(B * T) / (median(low_ms) * 1e-3);
    const std::string name = "moe." + o.dtype;
    std::printf("%-8s %9.1f %14.1f %10.1f %7.1f%% %12s %zu after %lld warmup\n", name.c_str(),
                low_tps, median(low_ms), low_tps * flops_tok / 1e9, mfu(low_tps), "(same)",
                low_ms.size(), (long long)o.warmup);
    std::printf("ratio ours %s / ours fp32: %.2fx tokens/s (medians of all steps; target >= "
                "1.6x for bf16); per round:",
                o.dtype.c_str(), low_tps / ours_tps);
    for (double x : low_ratio) std::printf(" %.2fx", x);
    std::printf("\n%s MFU is against the FP32 peak; the bf16 dot-product peak is higher\n",
                o.dtype.c_str());
  }
  if (!torch_ms.empty()) {
    const double torch_tps = double(B * T) / (median(torch_ms) * 1e-3);
    std::printf("%-8s %9.1f %14.1f %10.1f %7.1f%% %12.0f %zu in %zu runs, %lld warmup each\n",
                "pytorch", torch_tps, median(torch_ms), torch_tps * flops_tok / 1e9,
                mfu(torch_tps), last.peak_rss_mb, torch_ms.size(), round_ratio.size(),
                (long long)o.torch_warmup);
    std::printf("ratio ours/pytorch: %.2fx tokens/s (medians of all steps; target >= 1.4x); "
                "per round:",
                ours_tps / torch_tps);
    for (double x : round_ratio) std::printf(" %.2fx", x);
    std::printf("\npytorch: %s", last.info.c_str());
    std::printf("pytorch ran as `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 "
                "tests/reference/bench_torch.py` (both variables unset for it alone)\n");
  }
  if (!torch_error.empty()) std::printf("pytorch: not measured: %s\n", torch_error.c_str());
  std::printf("memory: analytic %.0f MB = state %.0f MB (params, grads, Adam m and v: 4 x %.2fM "
              "x 4 B) + saved activations %.0f MB\n",
              analytic / 1048576.0, state_bytes / 1048576.0, pc.total / 1e6,
              act_bytes / 1048576.0);
  std::printf("memory: ours peak RSS %.0f MB = %.2fx analytic (target <= 1.3x)%s",
              rss_peak / 1048576.0, rss_peak / analytic,
              rss_reset ? "" : " [VmHWM not reset: includes the peak probe]");
  if (!torch_ms.empty())
    std::printf("; pytorch %.0f MB = %.2fx", last.peak_rss_mb,
                last.peak_rss_mb * 1048576.0 / analytic);
  std::printf(" (RSS before the model: %.0f MB)\n", rss_before / 1048576.0);
  if (compare) {
    // The low-precision engine keeps, besides the fp32 one's state and activations, a bf16 copy
    // of every linear weight (model/gemms.h); the run above holds both engines' buffers.
    double linear = 0;
    for (const ParamSpec& sp : model.layout().specs)
      if (is_linear_weight(sp) || sp.name == "lm_head.weight") linear += double(sp.numel);
    if (cfg.tie_word_embeddings) linear += double(cfg.vocab_size) * cfg.hidden_size;
    const double low_analytic = analytic + 2.0 * linear;
    std::printf("memory: %s analytic %.0f MB = fp32 analytic + bf16 weight copies %.0f MB "
                "(%.2fM linear weights x 2 B); peak RSS %.0f MB = %.2fx (target <= 1.3x)\n",
                o.dtype.c_str(), low_analytic / 1048576.0, 2.0 * linear / 1048576.0, linear / 1e6,
                rss_peak / 1048576.0, rss_peak / low_analytic);
  }
  for (const auto& [dtype, sum] : prof_sums) {
    const double n = double(prof_steps[dtype]), step = prof_step_s[dtype] / n;
    std::printf("\nprofile, %s: where a step's %.0f ms go (mean of %.0f measured steps; kernel "
                "entry points timed, core/profile.h)\n",
                compute_dtype_name(dtype), 1e3 * step, n);
    std::printf("%-32s %9s %7s %12s\n", "part", "ms/step", "share", "calls/step");
    double covered = 0;
    for (int i = 0; i < static_cast<int>(prof::Part::kCount); ++i) {
      const double ms = 1e3 * sum.seconds[i] / n;
      covered += ms;
      if (sum.calls[i] == 0) continue;
      std::printf("%-32s %9.1f %6.1f%% %12.0f\n", prof::part_name(static_cast<prof::Part>(i)),
                  ms, 100.0 * ms / (1e3 * step), double(sum.calls[i]) / n);
    }
    std::printf("%-32s %9.1f %6.1f%%\n", "framework and the rest", 1e3 * step - covered,
                100.0 * (1e3 * step - covered) / (1e3 * step));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
}
