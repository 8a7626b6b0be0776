// The `moe` command: thin subcommands that parse, call the library and print.
//   moe train     [--config config.json] [--data FILE] [--steps N] ...   (no arguments: the
//                 default tiny model on the built-in corpus, then samples)
//   moe generate  --checkpoint DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K]
//   moe eval      --checkpoint DIR --data FILE [--seq-len T] [--json]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "train/trainer.h"

namespace {

using namespace moe;

// The default model of `moe train`: DeepSeek-style routing, small enough for two minutes on
// two cores.
ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.intermediate_size = 384;
  c.moe_intermediate_size = 128;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.0;
  c.max_position_embeddings = 256;
  c.seq_aux_alpha = 1e-4;
  c.bias_update_rate = 1e-3;
  return c;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "io", "cannot read '", path, "': check that the file exists");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void print_sample(const std::string& prompt, const std::vector<int32_t>& out) {
  std::string s = prompt + byte_decode(out);
  std::printf("---\n%s\n", s.c_str());
}

int cmd_train(const std::string& config_path, const std::string& data_path, TrainConfig tc,
              int64_t samples) {
  ModelConfig cfg = config_path.empty() ? tiny_config() : load_config(config_path);
  TokenData data;
  if (data_path.empty()) {
    const Corpus train = make_builtin_corpus(1, 4 << 20);
    const Corpus val = make_builtin_corpus(2, 1 << 18);
    data.train = byte_encode(train.text);
    data.val = byte_encode(val.text);
    data.entropy_floor = train.entropy_nats_per_byte;
    data.name = "built-in corpus";
  } else {
    const std::vector<int32_t> all = byte_encode(read_file(data_path));
    const size_t cut = all.size() - all.size() / 10;  // last 10% held out
    data.train.assign(all.begin(), all.begin() + cut);
    data.val.assign(all.begin() + cut, all.end());
    data.name = data_path;
  }
  if (tc.seq_len > cfg.max_position_embeddings) tc.seq_len = cfg.max_position_embeddings;
  Model model(cfg);
  model.init_weights(tc.seed);
  std::printf("moe train: %lld parameters (%lld in routed experts), %d threads, data: %s "
              "(%zu tokens)",
              static_cast<long long>(model.layout().total_numel),
              static_cast<long long>(model.layout().total_numel - model.layout().replicated_numel),
              omp_get_max_threads(), data.name.c_str(), data.train.size());
  if (data.entropy_floor >= 0) std::printf(", entropy floor %.4f nats/byte", data.entropy_floor);
  std::printf("\nsteps %lld, batch %lld x seq %lld, lr %.1e\n", static_cast<long long>(tc.steps),
              static_cast<long long>(tc.batch), static_cast<long long>(tc.seq_len), tc.lr);
  std::fflush(stdout);
  train(model, data, tc);
  if (samples > 0) {
    std::printf("samples:\n");
    const char* prompts[] = {"", "7+", "("};
    for (int64_t i = 0; i < samples; ++i) {
      GenerateOptions go;
      go.max_new_tokens = 160;
      go.seed = static_cast<uint64_t>(i);
      const std::string prompt = data_path.empty() ? prompts[i % 3] : "";
      print_sample(prompt, generate(model, byte_encode(prompt), go));
    }
  }
  return 0;
}

int cmd_generate(const std::string& dir, const std::string& prompt, GenerateOptions go) {
  ModelConfig cfg;
  std::vector<float> params;
  load_checkpoint(dir, &cfg, &params);
  Model model(cfg);
  model.params() = params;
  std::fputs(prompt.c_str(), stdout);
  generate(model, byte_encode(prompt), go, [](int32_t t) {
    std::fputc(t & 0xff, stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  return 0;
}

int cmd_eval(const std::string& dir, const std::string& data_path, int64_t seq_len, bool json) {
  ModelConfig cfg;
  std::vector<float> params;
  load_checkpoint(dir, &cfg, &params);
  Model model(cfg);
  model.params() = params;
  const int64_t T = seq_len > 0 ? seq_len : cfg.max_position_embeddings;
  const std::vector<int32_t> data = byte_encode(read_file(data_path));
  MOE_CHECK(static_cast<int64_t>(data.size()) >= T + 1, "eval", "'", data_path, "' has ",
            data.size(), " bytes, fewer than one window of ", T + 1, "; use --seq-len smaller");
  int64_t n = 0;
  const double loss = evaluate(model, data, T, 8, 0, &n);
  if (json)
    std::printf("{\"loss\": %.6f, \"tokens\": %lld}\n", loss, static_cast<long long>(n));
  else
    std::printf("loss %.4f nats/token over %lld tokens\n", loss, static_cast<long long>(n));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe.cpp: train Mixture-of-Experts language models on CPU"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "OpenMP threads (default: all cores)")
      ->check(CLI::Range(1, 4096))
      ->trigger_on_parse()  // before any subcommand callback runs
      ->each([](const std::string& n) { omp_set_num_threads(std::stoi(n)); });

  TrainConfig tc;
  std::string config_path, data_path, out_dir = "runs/default";
  int64_t samples = 3;
  auto* tr = app.add_subcommand("train", "train a model (no arguments: the default tiny model)");
  tr->add_option("--config", config_path, "model config.json (default: built-in tiny config)");
  tr->add_option("--data", data_path, "training text file, byte tokens (default: built-in corpus)");
  tr->add_option("--steps", tc.steps, "optimizer steps")->capture_default_str();
  tr->add_option("--batch", tc.batch, "sequences per micro-batch")->capture_default_str();
  tr->add_option("--seq-len", tc.seq_len, "sequence length")->capture_default_str();
  tr->add_option("--accum", tc.accum, "micro-batches per step")->capture_default_str();
  tr->add_option("--lr", tc.lr, "peak learning rate")->capture_default_str();
  tr->add_option("--warmup", tc.warmup, "warmup steps")->capture_default_str();
  tr->add_option("--seed", tc.seed, "seed for weights and data order")->capture_default_str();
  tr->add_option("--log-every", tc.log_every, "steps between log lines")->capture_default_str();
  tr->add_option("--out", out_dir, "checkpoint directory")->capture_default_str();
  tr->add_option("--samples", samples, "samples printed at the end")->capture_default_str();

  std::string ckpt, prompt;
  GenerateOptions go;
  auto* ge = app.add_subcommand("generate", "sample text from a checkpoint");
  ge->add_option("--checkpoint", ckpt, "checkpoint directory")->required();
  ge->add_option("--prompt", prompt, "prompt text")->required();
  ge->add_option("--max-new-tokens", go.max_new_tokens)->capture_default_str();
  ge->add_option("--temperature", go.temperature)->capture_default_str();
  ge->add_option("--top-k", go.top_k)->capture_default_str();
  ge->add_option("--seed", go.seed)->capture_default_str();

  std::string eval_ckpt, eval_data;
  int64_t eval_seq = 0;
  bool json = false;
  auto* ev = app.add_subcommand("eval", "mean next-token cross-entropy of a checkpoint on a file");
  ev->add_option("--checkpoint", eval_ckpt, "checkpoint directory")->required();
  ev->add_option("--data", eval_data, "text file")->required();
  ev->add_option("--seq-len", eval_seq, "window length (default max_position_embeddings)");
  ev->add_flag("--json", json, "print {\"loss\": L, \"tokens\": N}");

  // Subcommands added by add_*_commands run in CLI11 callbacks during parse(), so one try
  // covers parsing and running.
  try {
    app.parse(argc, argv);
    if (*tr) {
      tc.out_dir = out_dir;
      return cmd_train(config_path, data_path, tc, samples);
    }
    if (*ge) return cmd_generate(ckpt, prompt, go);
    if (*ev) return cmd_eval(eval_ckpt, eval_data, eval_seq, json);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
