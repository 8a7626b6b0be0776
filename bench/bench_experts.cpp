// Expert scaling (issue #19, item 2): bench-moe with 8, 16, 32 and 64 routed experts at top-2.
// Every variant has the same active FLOPs per token (the same two experts of the same width,
// the same shared expert and attention), so a MoE engine should train them at the same
// tokens/s; more experts only add parameters, optimizer state and smaller per-expert GEMMs.
// A benchmark, not a test: it prints, it never fails on a time.
//
//   bench_experts [--experts 8,16,32,64] [--rounds 3] [--steps 2] [--warmup 1] [--threads 2]
//                 [--batch 8] [--seq 512] [--dtype fp32|bf16]
//
// All variants are built first and then trained in interleaved rounds (each round: `steps` of
// every variant in turn), so a noisy neighbour hits them alike. One step is a whole training
// step as bench_train times it: zero gradients, forward + backward, AdamW, balancing-bias update.
// Printed per variant: median step time, tokens/s, its ratio to the first variant, and the
// time of forward+backward and of AdamW separately (AdamW grows with the parameters).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/corpus.h"
#include "model/config.h"
#include "model/flops.h"
#include "model/model.h"
#include "model/presets.h"
#include "train/optimizer.h"

namespace {

using namespace moe;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int64_t> experts{8, 16, 32, 64};
  int64_t rounds = 3, steps = 2, warmup = 1, batch = 8, seq = 512;
  int threads = 2;
  std::string dtype = "fp32";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf(
          "bench_experts [--experts 8,16,32,64] [--rounds 3] [--steps 2] [--warmup 1]\n"
          "              [--threads 2] [--batch 8] [--seq 512] [--dtype fp32|bf16]\n");
      std::exit(0);
    }
    MOE_CHECK(i + 1 < argc, "bench_experts", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--experts") {
      o.experts.clear();
      std::stringstream ss(v);
      for (std::string e; std::getline(ss, e, ',');) o.experts.push_back(std::atoll(e.c_str()));
    } else if (k == "--rounds") {
      o.rounds = std::atoll(v.c_str());
    } else if (k == "--steps") {
      o.steps = std::atoll(v.c_str());
    } else if (k == "--warmup") {
      o.warmup = std::atoll(v.c_str());
    } else if (k == "--threads") {
      o.threads = std::atoi(v.c_str());
    } else if (k == "--batch") {
      o.batch = std::atoll(v.c_str());
    } else if (k == "--seq") {
      o.seq = std::atoll(v.c_str());
    } else if (k == "--dtype") {
      o.dtype = v;
    } else {
      MOE_FAIL("bench_experts", "unknown option ", k,
               " (known: --experts --rounds --steps --warmup --threads --batch --seq --dtype)");
    }
  }
  MOE_CHECK(!o.experts.empty() && o.rounds >= 1 && o.steps >= 1 && o.threads >= 1,
            "bench_experts", "need a non-empty --experts list, --rounds, --steps, --threads >= 1");
  for (const int64_t e : o.experts)
    MOE_CHECK(e >= 2, "bench_experts", "--experts ", e, ": top-2 routing needs at least 2");
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Variant {
  ModelConfig cfg;
  std::unique_ptr<Model> model;
  std::unique_ptr<AdamW> opt;
  AdamWConfig ac;
  std::vector<double> step_s, fb_s, opt_s;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    omp_set_num_threads(o.threads);
    const int64_t B = o.batch, T = o.seq;
    const ComputeDtype dtype = parse_compute_dtype(o.dtype, "--dtype");
    const std::string stream =
        make_builtin_corpus(1234, std::max<int64_t>(B * (T + 1) * 64, 1 << 20)).text;
    std::vector<int32_t> tokens(static_cast<size_t>(B * (T + 1)));
    auto batch = [&](int64_t step) {  // consecutive windows of the corpus, bytes as tokens
      const size_t span = tokens.size(), off = (size_t(step) * span) % (stream.size() - span);
      for (size_t i = 0; i < span; ++i) tokens[i] = static_cast<unsigned char>(stream[off + i]);
    };

    std::vector<Variant> vs;
    for (const int64_t e : o.experts) {
      Variant v;
      v.cfg = bench_moe_config(T);
      v.cfg.n_routed_experts = e;
      v.cfg.validate();
      v.model = std::make_unique<Model>(v.cfg);
      v.model->init_weights(0);
      v.model->set_compute_dtype(dtype);
      v.ac.lr = 1e-3;
      v.opt = std::make_unique<AdamW>(v.model->layout(), v.ac);
      const ParamCounts pc = count_params(v.cfg);
      std::printf("E=%-3lld top-%lld: %.1fM parameters, %.2fM active, %.1f MFLOP per token\n",
                  (long long)e, (long long)v.cfg.num_experts_per_tok, pc.total / 1e6,
                  pc.active / 1e6, train_flops_per_token(v.cfg, T) / 1e6);
      vs.push_back(std::move(v));
    }
    int64_t step = 0;
    auto train_step = [&](Variant& v, bool record) {
      batch(step++);
      const auto t0 = Clock::now();
      v.model->zero_grads();
      v.model->forward_backward(tokens.data(), B, T, 1.0f);
      const auto t1 = Clock::now();
      v.opt->step(v.model->params().data(), v.model->grads().data(), v.ac.lr);
      v.model->update_balance_biases();
      const auto t2 = Clock::now();
      if (!record) return;
      v.fb_s.push_back(std::chrono::duration<double>(t1 - t0).count());
      v.opt_s.push_back(std::chrono::duration<double>(t2 - t1).count());
      v.step_s.push_back(std::chrono::duration<double>(t2 - t0).count());
    };
    for (auto& v : vs)
      for (int64_t s = 0; s < o.warmup; ++s) train_step(v, false);
    for (int64_t r = 0; r < o.rounds; ++r) {
      for (auto& v : vs)
        for (int64_t s = 0; s < o.steps; ++s) train_step(v, true);
      std::printf("round %lld:", (long long)r + 1);
      for (auto& v : vs)
        std::printf(" E=%lld %.0f ms", (long long)v.cfg.n_routed_experts,
                    1e3 * v.step_s.back());
      std::printf("\n");
      std::fflush(stdout);
    }

    std::printf("\n== expert scaling: bench-moe at top-2, %s, %d threads, B=%lld T=%lld, "
                "medians of %lld steps ==\n",
                o.dtype.c_str(), o.threads, (long long)B, (long long)T,
                (long long)(o.rounds * o.steps));
    std::printf("experts  params(M)    tok/s  step ms  fwd+bwd ms  AdamW ms  tok/s vs E=%lld\n",
                (long long)vs.front().cfg.n_routed_experts);
    const double base = double(B * T) / median(vs.front().step_s);
    for (auto& v : vs) {
      const double tps = double(B * T) / median(v.step_s);
      std::printf("%7lld %10.1f %8.1f %8.0f %11.0f %9.0f %10.3fx\n",
                  (long long)v.cfg.n_routed_experts, count_params(v.cfg).total / 1e6, tps,
                  1e3 * median(v.step_s), 1e3 * median(v.fb_s), 1e3 * median(v.opt_s),
                  tps / base);
    }
    std::printf("target: E=64 within 15%% of E=8 (ratio >= 0.85x)\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
