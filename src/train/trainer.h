// The training loop: batches from a token stream, forward/backward with gradient accumulation,
// global gradient-norm clipping, AdamW with warmup + cosine decay, auxiliary-loss-free bias
// updates, a progress line per log interval, held-out evaluation, and a final checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"

namespace moe {

// Loss-spike and non-finite guards (see guards.h).
struct GuardConfig {
  bool skip_nonfinite = true;       // a NaN/inf loss or gradient skips the step
  double spike_zscore = 6.0;        // loss above mean + z * std of the recent window is a spike
  int64_t spike_window = 50;        // accepted steps the mean and std are taken over
  int64_t spike_min_history = 20;   // no spike detection before this many accepted steps
  int64_t max_spikes = 3;           // this many spikes within spike_window steps roll back
  double rollback_lr_factor = 0.5;  // the learning rate is multiplied by this on a rollback
};

struct TrainConfig {
  int64_t steps = 600;          // optimizer steps
  int64_t batch = 16;           // sequences per micro-batch
  int64_t seq_len = 128;        // T
  int64_t accum = 1;            // micro-batches per step
  uint64_t seed = 1234;         // weights and data order
  std::string dtype = "fp32";   // weight GEMMs: "fp32", "bf16" or "fp8" (model/gemms.h)
  double lr = 3e-3;             // peak learning rate
  double min_lr_ratio = 0.1;    // the schedule ends at lr * this
  int64_t warmup = 30;          // linear warmup steps
  std::string schedule = "cosine";  // "cosine", "wsd" (warmup-stable-decay) or "constant"
  double decay_frac = 0.2;      // wsd: the last fraction of steps decays linearly
  double grad_clip = 1.0;       // global gradient-norm clip (0 = off)
  AdamWConfig adamw;            // lr inside is ignored; `lr` above is the peak
  int64_t log_every = 25;       // steps between progress lines and metrics records
  int64_t eval_every = 0;       // steps between validation passes (0 = only at the end)
  int64_t eval_tokens = 65536;  // held-out tokens per validation pass (0 = none)
  int64_t sample_every = 0;     // steps between printed samples (0 = none during training)
  std::string out_dir;          // run folder: final model, checkpoints/, metrics.jsonl ("" = none)
  int64_t ckpt_every = 0;       // steps between resumable checkpoints (0 = only at the end)
  int64_t ckpt_keep = 3;        // resumable checkpoints kept (oldest deleted first)
  bool resume = false;          // continue from the newest valid checkpoint in out_dir
  int64_t stop_after = 0;       // stop with a checkpoint after this many steps in this process
                                // (0 = run to `steps`), for runs split across job time limits
  GuardConfig guard;
  std::string progress = "auto";  // "auto" (live line on a terminal), "plain" or "none"
  bool metrics = true;            // write out_dir/metrics.jsonl
  // Test hook: "nan@12,spike@20,spike@21" poisons the loss of those steps (0-based);
  // "kill@12:r1" kills rank 1 by SIGKILL at step 12 (first attempt only).
  std::string fault_inject;
  // Attempt of this job under `moe launch --max-restarts` (MOE_RESTART_COUNT; 0 = first). A
  // restarted job resumes from the newest valid checkpoint.
  int64_t restart_count = 0;
};

class TokenDataset;  // data/shards.h

// Where the tokens come from.
struct DataConfig {
  // "builtin"; a text file (tokenized once into RUN/data/, a token-shard cache reused while the
  // file, tokenizer and val_fraction stay the same); or a folder made by `moe data prepare`
  // (its tokenizer and its validation split).
  std::string source = "builtin";
  // "" (auto: byte for text files, the folder's own for prepared data), "byte", or a
  // tokenizer.json (or a folder holding one), e.g. "runs/tok/tokenizer.json".
  std::string tokenizer;
  double val_fraction = 0.1;       // text files: the tail of the file held out
  int64_t builtin_bytes = 4 << 20; // built-in corpus size
  // key ("source", "tokenizer", ...) -> where it was set ("configs/small.toml:24" or
  // "command line --data.source"), for messages. Filled by load_run_config.
  std::map<std::string, std::string> where;
};

// The token streams of a run. The built-in corpus lives in memory (train/val, sampled with
// sample_batch); text files and prepared folders are a TokenDataset (memory-mapped shards,
// windows drawn from (seed, step, micro-batch, rank) by TokenDataset::sample_windows).
struct TokenData {
  std::vector<int32_t> train, val;  // in-memory token ids (used when dataset is null)
  std::shared_ptr<const TokenDataset> dataset;
  double entropy_floor = -1;        // nats/token if known (built-in corpus), else < 0
  std::string name;                 // for the log
  std::string tokenizer_spec = "byte";  // "byte" or the absolute path of a tokenizer.json
  int64_t vocab_size = 256;         // every token id is below this
  // Tokens -> text, for samples printed during training (sample_every); null = no samples.
  std::function<std::string(const std::vector<int32_t>&)> decode;
  std::vector<int32_t> sample_prompt;  // start of each sample (may be empty)

  int64_t train_tokens() const;
  int64_t val_tokens() const;
};

struct TrainResult {
  std::vector<double> losses;  // per step (mean over accumulation), including aux terms
  double final_train_ce = 0;   // mean CE over the last log interval
  double val_ce = -1;          // held-out CE (nats/token), -1 if not evaluated
  // Held-out MTP acceptance (num_nextn_predict_layers > 0): module 0's argmax is the true
  // token i+2 (acc) / the main model's argmax at i+1 (agree); -1 if not evaluated.
  double val_mtp_acc = -1, val_mtp_agree = -1;
  double tokens_per_s = 0;     // over the steps run in this process
  int64_t steps_run = 0;       // steps this call executed (after a resume: the remainder)
  int64_t skipped = 0, rollbacks = 0;  // guard actions over the whole run
  bool interrupted = false;    // stopped by SIGINT/SIGTERM after writing a checkpoint
  bool stopped = false;        // stopped by stop_after after writing a checkpoint
};

// Learning rate at step s (0-based): linear warmup, then cosine to lr * min_lr_ratio, or
// constant, or warmup-stable-decay (constant, then linear to lr * min_lr_ratio over the last
// decay_frac of the steps).
double lr_at(const TrainConfig& tc, int64_t step);

// Fills tokens (B, T+1) with windows drawn deterministically from (seed, step, micro-batch).
void sample_batch(int32_t* tokens, const std::vector<int32_t>& data, int64_t B, int64_t T,
                  uint64_t seed, int64_t step, int64_t micro);

// Micro-batch `micro` of step `step` (B, T+1): the dataset's sample_windows (rank 0) or, for
// in-memory data, sample_batch.
void sample_train_batch(int32_t* tokens, const TokenData& data, int64_t B, int64_t T,
                        uint64_t seed, int64_t step, int64_t micro);

class Parallel;  // parallel/parallel.h

// What an evaluation counts of MTP module 0 (LossStats::mtp_*), summed over its windows.
struct MtpEval {
  int64_t positions = 0, hits = 0, agree = 0;
  double ce_sum = 0;  // module 0's cross-entropy summed over the positions, nats
  double acc() const { return positions > 0 ? double(hits) / double(positions) : 0.0; }
  double agreement() const { return positions > 0 ? double(agree) / double(positions) : 0.0; }
  void add(const LossStats& st) {
    positions += st.mtp_positions, hits += st.mtp_hits, agree += st.mtp_agree;
    if (!st.mtp_ce.empty()) ce_sum += st.mtp_ce[0] * double(st.mtp_positions);
  }
};

// Mean CE (nats/token) over consecutive windows of data (at most max_tokens predictions).
// With mtp, MTP module 0's counts are added to it (the model must have MTP modules).
double evaluate(Model& model, const std::vector<int32_t>& data, int64_t T, int64_t batch,
                int64_t max_tokens, int64_t* tokens_out = nullptr, MtpEval* mtp = nullptr);
// The same over `windows` windows that fill(buf, first window, count) writes as (count, T+1).
double evaluate_windows(Model& model, int64_t windows, int64_t T, int64_t batch,
                        const std::function<void(int32_t*, int64_t, int64_t)>& fill,
                        int64_t* tokens_out = nullptr, MtpEval* mtp = nullptr);
// fill for evaluate_windows: window w is data[w*T, w*T + T + 1) (data must outlive it).
std::function<void(int32_t*, int64_t, int64_t)> consecutive_windows(
    const std::vector<int32_t>& data, int64_t T);
// The same over the held-out split (the dataset's val windows, or data.val); with par, every
// rank of the job evaluates a slice and all get the mean over all windows (the MTP counts then
// come from the batches without padding windows, summed over the ranks).
double evaluate(Model& model, const TokenData& data, int64_t T, int64_t batch, int64_t max_tokens,
                int64_t* tokens_out = nullptr, Parallel* par = nullptr, MtpEval* mtp = nullptr);

// The streams a [data] section names (see DataConfig). cache_dir: where a text file is
// tokenized into shards ("" = a temporary folder, removed once the shards are mapped).
TokenData load_data(const DataConfig& dc, const std::string& cache_dir = "");

// Throws, naming the key, both values and the fix, unless the model can embed every token id of
// data (vocab_size >= data.vocab_size). `where` says where vocab_size was set.
void check_vocab(const ModelConfig& cfg, const TokenData& data, const std::string& where);

// One process, or (par) this rank's part of a distributed job: the model built with
// par->layout_options() and attached with par->attach(model). Every rank calls it.
TrainResult train(Model& model, const TokenData& data, const TrainConfig& tc,
                  Parallel* par = nullptr);

}  // namespace moe
