// The `moe` command: thin subcommands that parse, call the library and print.
//   moe train     [--config config.json] [--data FILE] [--steps N] ...   (no arguments: the
//                 default tiny model on the built-in corpus, then samples)
//   moe generate  --checkpoint DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K]
//   moe eval      --checkpoint DIR --data FILE [--seq-len T] [--json]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "model/flops.h"
#include "core/safetensors.h"

namespace {

using namespace moe;

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

int cmd_train(const std::string& config_path, std::vector<Override> overrides, int64_t samples) {
  // A config.json is a model config: the run takes its other settings from the defaults.
  std::string toml_path = config_path;
  if (config_path.size() > 5 && config_path.substr(config_path.size() - 5) == ".json") {
    overrides.insert(overrides.begin(), {"model.config", config_path});
    toml_path.clear();
  }
  RunConfig rc;
  if (!toml_path.empty() || overrides.empty() || overrides.front().first != "model.config") {
    rc = load_run_config(toml_path, overrides);
  } else {
    const std::string json_path = overrides.front().second;
    overrides.erase(overrides.begin());
    rc = load_run_config("", overrides);
    std::vector<Override> model_over;
    for (const auto& o : overrides)
      if (o.first.rfind("model.", 0) == 0) model_over.push_back(o);
    rc.model = load_config(json_path);
    rc.model_origin = json_path;
    if (!model_over.empty()) {
      MOE_FAIL("config", "--model.* overrides need a TOML run config; put them in ", json_path);
    }
    if (rc.train.seq_len > rc.model.max_position_embeddings)
      rc.train.seq_len = rc.model.max_position_embeddings;
  }
  const TokenData data = load_data(rc.data);
  Model model(rc.model);
  model.init_weights(rc.train.seed);
  const TrainConfig& tc = rc.train;
  const ParamCounts pc = count_params(rc.model);
  std::printf("moe train: %.2fM parameters (%.2fM active per token), model from %s, %d threads\n"
              "data: %s (%zu train tokens, %zu held out)",
              double(pc.total) / 1e6, double(pc.active) / 1e6, rc.model_origin.c_str(),
              omp_get_max_threads(), data.name.c_str(), data.train.size(), data.val.size());
  if (data.entropy_floor >= 0) std::printf(", entropy floor %.4f nats/byte", data.entropy_floor);
  std::printf("\nsteps %lld, batch %lld x seq %lld x accum %lld, lr %.1e (%s), run folder %s\n",
              static_cast<long long>(tc.steps), static_cast<long long>(tc.batch),
              static_cast<long long>(tc.seq_len), static_cast<long long>(tc.accum), tc.lr,
              tc.schedule.c_str(), tc.out_dir.empty() ? "(none)" : tc.out_dir.c_str());
  std::fflush(stdout);
  if (!tc.out_dir.empty()) {
    std::filesystem::create_directories(tc.out_dir);
    const std::string toml = run_config_to_toml(rc);
    write_file_atomic(tc.out_dir + "/run.toml", {{toml.data(), toml.size()}});
  }
  const TrainResult r = train(model, data, tc);
  if (r.interrupted) {
    std::printf("interrupted: checkpoint written; continue with --resume\n");
    return 130;
  }
  if (r.stopped) {
    std::printf("stopped after %lld steps (checkpoint.stop_after): continue with --resume\n",
                static_cast<long long>(r.steps_run));
    return 0;
  }
  if (samples > 0) {
    std::printf("samples:\n");
    const char* prompts[] = {"", "7+", "("};
    for (int64_t i = 0; i < samples; ++i) {
      GenerateOptions go;
      go.max_new_tokens = 160;
      go.seed = static_cast<uint64_t>(i);
      const std::string prompt = rc.data.source == "builtin" ? prompts[i % 3] : "";
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

void add_comm_commands(CLI::App& app);    // cmd_comm.cpp: launch, comm-bench
void add_report_commands(CLI::App& app);  // cmd_report.cpp
void add_plan_commands(CLI::App& app);    // cmd_plan.cpp
void add_data_commands(CLI::App& app);    // cmd_data.cpp

int main(int argc, char** argv) {
  CLI::App app{"moe.cpp: train Mixture-of-Experts language models on CPU"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "OpenMP threads (default: all cores)")
      ->check(CLI::Range(1, 4096))
      ->trigger_on_parse()  // before any subcommand callback runs
      ->each([](const std::string& n) { omp_set_num_threads(std::stoi(n)); });

  std::string config_path;
  std::vector<Override> shortcuts;
  int64_t samples = 3;
  bool resume = false, help_config = false;
  auto* tr = app.add_subcommand(
      "train",
      "train a model (no arguments: the default tiny model on the built-in corpus); any run "
      "config key can be overridden as --section.key VALUE, e.g. --train.steps 200");
  tr->add_option("--config", config_path,
                 "run config (TOML, see configs/) or a model config.json");
  auto shortcut = [&](const char* flag, const char* key, const char* help) {
    tr->add_option_function<std::string>(
        flag, [&shortcuts, key](const std::string& v) { shortcuts.emplace_back(key, v); }, help);
  };
  shortcut("--steps", "train.steps", "= --train.steps");
  shortcut("--batch", "train.batch", "= --train.batch");
  shortcut("--seq-len", "train.seq_len", "= --train.seq_len");
  shortcut("--seed", "train.seed", "= --train.seed");
  shortcut("--lr", "optim.lr", "= --optim.lr");
  shortcut("--data", "data.source", "= --data.source (a text file, or builtin)");
  shortcut("--out", "checkpoint.dir", "= --checkpoint.dir (run folder)");
  tr->add_flag("--resume", resume, "continue from the newest valid checkpoint in the run folder");
  tr->add_option("--samples", samples, "samples printed at the end")->capture_default_str();
  tr->add_flag("--help-config", help_config, "list every run config key and exit");
  tr->allow_extras();

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

  add_comm_commands(app);
  add_report_commands(app);
  add_plan_commands(app);
  add_data_commands(app);

  // Subcommands added by add_*_commands run in CLI11 callbacks during parse(), so one try
  // covers parsing and running.
  try {
    app.parse(argc, argv);
    if (*tr) {
      if (help_config) {
        std::fputs(run_config_reference().c_str(), stdout);
        return 0;
      }
      std::vector<Override> overrides = shortcuts;
      for (const auto& o : parse_overrides(tr->remaining())) overrides.push_back(o);
      if (resume) overrides.emplace_back("checkpoint.resume", "true");
      return cmd_train(config_path, overrides, samples);
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
