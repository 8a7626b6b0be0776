#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/rng.h"
#include "model/checkpoint.h"

namespace moe {

double lr_at(const TrainConfig& tc, int64_t step) {
  if (tc.warmup > 0 && step < tc.warmup)
    return tc.lr * static_cast<double>(step + 1) / static_cast<double>(tc.warmup);
  const double span = std::max<int64_t>(1, tc.steps - tc.warmup);
  const double progress = std::min(1.0, static_cast<double>(step - tc.warmup) / span);
  const double floor = tc.lr * tc.min_lr_ratio;
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

double evaluate(Model& model, const std::vector<int32_t>& data, int64_t T, int64_t batch,
                int64_t max_tokens, int64_t* tokens_out) {
  const int64_t windows = (static_cast<int64_t>(data.size()) - 1) / T;
  int64_t use = windows;
  if (max_tokens > 0) use = std::min(use, std::max<int64_t>(1, max_tokens / T));
  double sum = 0;
  int64_t count = 0;
  std::vector<int32_t> buf(batch * (T + 1));
  for (int64_t w0 = 0; w0 < use; w0 += batch) {
    const int64_t nb = std::min(batch, use - w0);
    for (int64_t b = 0; b < nb; ++b)
      std::copy(data.begin() + (w0 + b) * T, data.begin() + (w0 + b) * T + T + 1,
                buf.begin() + b * (T + 1));
    const LossStats st = model.forward(buf.data(), nb, T);
    sum += st.ce * static_cast<double>(nb * T);
    count += nb * T;
  }
  model.reset_load();
  if (tokens_out) *tokens_out = count;
  return count ? sum / static_cast<double>(count) : 0.0;
}

namespace {

double global_grad_norm(const std::vector<float>& g) {
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (size_t i = 0; i < g.size(); ++i) s += static_cast<double>(g[i]) * g[i];
  return std::sqrt(s);
}

}  // namespace

TrainResult train(Model& model, const TokenData& data, const TrainConfig& tc) {
  MOE_CHECK(tc.steps > 0 && tc.batch > 0 && tc.seq_len > 0 && tc.accum > 0, "train",
            "steps, batch, seq_len and accum must be positive");
  const int64_t B = tc.batch, T = tc.seq_len;
  AdamW opt(model.layout(), tc.adamw);
  std::vector<int32_t> tokens(B * (T + 1));
  TrainResult r;
  const auto t_start = std::chrono::steady_clock::now();
  auto t_log = t_start;
  double ce_window = 0;
  int64_t window_steps = 0;

  for (int64_t step = 0; step < tc.steps; ++step) {
    model.zero_grads();
    LossStats sum;
    for (int64_t m = 0; m < tc.accum; ++m) {
      sample_batch(tokens.data(), data.train, B, T, tc.seed, step, m);
      const LossStats st =
          model.forward_backward(tokens.data(), B, T, 1.0f / static_cast<float>(tc.accum));
      sum.loss += st.loss / tc.accum;
      sum.ce += st.ce / tc.accum;
      sum.dropped += st.dropped;
    }
    MOE_CHECK(std::isfinite(sum.loss), "train", "loss is ", sum.loss, " at step ", step,
              "; lower the learning rate (--lr) or check the data");
    const double gnorm = global_grad_norm(model.grads());
    if (tc.grad_clip > 0 && gnorm > tc.grad_clip) {
      const float k = static_cast<float>(tc.grad_clip / gnorm);
      auto& g = model.grads();
#pragma omp parallel for schedule(static)
      for (size_t i = 0; i < g.size(); ++i) g[i] *= k;
    }
    const double lr = lr_at(tc, step);
    opt.step(model.params().data(), model.grads().data(), lr);
    model.update_balance_biases();
    r.losses.push_back(sum.loss);
    ce_window += sum.ce;
    ++window_steps;

    if ((step + 1) % tc.log_every == 0 || step + 1 == tc.steps) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double tps = static_cast<double>(window_steps * tc.accum * B * T) / dt;
      r.final_train_ce = ce_window / window_steps;
      std::printf("step %5lld/%lld | loss %.4f | ce %.4f", static_cast<long long>(step + 1),
                  static_cast<long long>(tc.steps), sum.loss, r.final_train_ce);
      if (data.entropy_floor >= 0)
        std::printf(" (floor %.4f, gap %.4f)", data.entropy_floor,
                    r.final_train_ce - data.entropy_floor);
      std::printf(" | grad norm %.3f | lr %.2e | %.0f tok/s\n", gnorm, lr, tps);
      std::fflush(stdout);
      t_log = now;
      ce_window = 0;
      window_steps = 0;
    }
  }
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  r.tokens_per_s = static_cast<double>(tc.steps * tc.accum * B * T) / total_s;

  if (tc.eval_tokens > 0 && !data.val.empty()) {
    int64_t n = 0;
    r.val_ce = evaluate(model, data.val, T, B, tc.eval_tokens, &n);
    std::printf("held-out: ce %.4f nats/token over %lld tokens", r.val_ce,
                static_cast<long long>(n));
    if (data.entropy_floor >= 0)
      std::printf(" | entropy floor %.4f | gap %.4f", data.entropy_floor,
                  r.val_ce - data.entropy_floor);
    std::printf("\n");
  }
  if (!tc.out_dir.empty()) {
    save_checkpoint(tc.out_dir, model.config(), model.layout(), model.params().data());
    std::printf("checkpoint: %s\n", tc.out_dir.c_str());
  }
  return r;
}

}  // namespace moe
