// The training loop: batches from a token stream, forward/backward with gradient accumulation,
// global gradient-norm clipping, AdamW with warmup + cosine decay, auxiliary-loss-free bias
// updates, a progress line per log interval, held-out evaluation, and a final checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"

namespace moe {

struct TrainConfig {
  int64_t steps = 600;          // optimizer steps
  int64_t batch = 16;           // sequences per micro-batch
  int64_t seq_len = 128;        // T
  int64_t accum = 1;            // micro-batches per step
  double lr = 3e-3;             // peak learning rate
  double min_lr_ratio = 0.1;    // cosine decays to lr * this
  int64_t warmup = 30;          // linear warmup steps
  double grad_clip = 1.0;       // global gradient-norm clip (0 = off)
  AdamWConfig adamw;            // lr inside is ignored; `lr` above is the peak
  uint64_t seed = 1234;         // weights and data order
  int64_t log_every = 25;       // steps between progress lines
  int64_t eval_tokens = 65536;  // held-out tokens evaluated at the end (0 = skip)
  std::string out_dir;          // checkpoint written here at the end ("" = none)
};

// A token stream to sample windows from.
struct TokenData {
  std::vector<int32_t> train, val;  // token ids
  double entropy_floor = -1;        // nats/token if known (built-in corpus), else < 0
  std::string name;                 // for the log
};

struct TrainResult {
  std::vector<double> losses;  // per step (mean over accumulation), including aux terms
  double final_train_ce = 0;   // mean CE over the last log interval
  double val_ce = -1;          // held-out CE (nats/token), -1 if not evaluated
  double tokens_per_s = 0;     // over the whole run
};

// Learning rate at step s (0-based): linear warmup, then cosine to lr * min_lr_ratio.
double lr_at(const TrainConfig& tc, int64_t step);

// Fills tokens (B, T+1) with windows drawn deterministically from (seed, step, micro-batch).
void sample_batch(int32_t* tokens, const std::vector<int32_t>& data, int64_t B, int64_t T,
                  uint64_t seed, int64_t step, int64_t micro);

// Mean CE (nats/token) over consecutive windows of data (at most max_tokens predictions).
double evaluate(Model& model, const std::vector<int32_t>& data, int64_t T, int64_t batch,
                int64_t max_tokens, int64_t* tokens_out = nullptr);

TrainResult train(Model& model, const TokenData& data, const TrainConfig& tc);

}  // namespace moe
