// The `moe` command: thin subcommands that parse, call the library and print.
//   moe train     [--config config.json] [--data FILE] [--steps N] ...   (no arguments: the
//                 default tiny model on the built-in corpus, then samples)
//   moe generate  --checkpoint DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K]
//                 [--dtype fp32|int8]   (prints the precision and tokens/s to stderr)
//   moe eval      --checkpoint DIR --data FILE [--seq-len T] [--json] [--dtype fp32|int8]
//   moe quantize  --checkpoint DIR --out DIR2 [--dtype int8|bf16|fp32]   (cmd_quantize.cpp)
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "data/corpus.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "data/tokenizers.h"
#include "infer/generate.h"
#include "model/quantized.h"
#include "kernels/cpu/quantize.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "comm/communicator.h"
#include "comm/env.h"
#include "parallel/parallel.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "model/flops.h"
#include "core/checksum.h"
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

// How generate / eval compute: "auto" = as the folder is stored (int8 for an int8 folder, else
// fp32), "fp32" (an int8 folder's weights dequantized), "int8" (a float folder quantized on the
// fly, per output channel, as moe quantize does).
std::string parse_precision(const std::string& text, const char* op) {
  MOE_CHECK(text == "auto" || text == "fp32" || text == "int8", op, "unknown --dtype '", text,
            "' (allowed: fp32, int8; default: as the checkpoint is stored)");
  return text;
}

// A model folder's weights and the tokenizer it names; the model must embed every token id.
struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Int8Weights> int8;  // null: fp32 compute
  std::string weights;                // as stored: "float32", "bfloat16" or "int8"
  std::string precision;              // one line saying how the model computes
};
LoadedModel load_model_dir(const std::string& dir, const std::string& precision = "fp32") {
  ModelConfig cfg;
  std::vector<float> params;
  auto int8 = std::make_unique<Int8Weights>();
  const CheckpointInfo info = load_quantized(dir, &cfg, &params, int8.get(), precision == "int8");
  const bool use_int8 = precision == "int8" || (precision == "auto" && !int8->empty());
  LoadedModel m;
  const std::string stored = weight_format_name(info.format);
  m.weights = stored;
  if (use_int8) {
    m.int8 = std::move(int8);
    m.precision =
        "int8 (" + std::to_string(m.int8->tensors()) + " linear weights int8 per " +
        "output channel " +
        (info.format == WeightFormat::kInt8 ? std::string("as stored")
                                            : "quantized now from the " + stored + " checkpoint") +
        ", activations u8 per token; embedding, router, norms, attention scores and "
        "lm_head fp32)";
  } else {
    m.precision = info.format == WeightFormat::kF32
                      ? std::string("fp32")
                      : "fp32 (the " + stored + " checkpoint's weights " +
                            (info.format == WeightFormat::kInt8 ? "dequantized" : "widened") +
                            " to fp32)";
  }
  m.tok = make_tokenizer(model_tokenizer_spec(dir));
  MOE_CHECK(cfg.vocab_size >= m.tok->vocab_size(), "checkpoint", dir,
            "/config.json: vocab_size = ", cfg.vocab_size, " is smaller than the vocab of its "
            "tokenizer (", m.tok->vocab_size(), ", ", m.tok->name(),
            "); the folder mixes two runs: copy the tokenizer.json of the run that trained it");
  m.model = std::make_unique<Model>(cfg);
  m.model->params() = params;
  return m;
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
  // A job that `moe launch --max-restarts` started again after a rank died resumes from the
  // newest valid checkpoint of its run folder.
  if (const char* n = std::getenv("MOE_RESTART_COUNT")) rc.train.restart_count = std::atoll(n);
  const TrainConfig& tc = rc.train;
  // Under moe launch, torchrun, mpirun or srun with more than one rank: one job of dp x ep
  // ranks (DiLoCo: groups of dp x ep ranks). Every rank checks the layout and that all run the
  // same config before any work.
  std::shared_ptr<comm::Communicator> world;
  if (comm::detect_env().size > 1) world = comm::Communicator::from_env();
  Parallel par(world, rc.parallel, rc.model);
  par.check_same("config", run_config_to_toml(rc));
  const bool lead = par.rank() == 0;
  // Rank 0 tokenizes a text file into the run folder's cache first; the others then map it.
  const std::string cache =
      tc.out_dir.empty() ? "" : (std::filesystem::path(tc.out_dir) / "data").string();
  TokenData data;
  if (lead) data = load_data(rc.data, cache);
  if (world) world->barrier();
  if (!lead) data = load_data(rc.data, cache);
  std::string vocab_where = rc.where_of("model.vocab_size");
  if (vocab_where.empty()) vocab_where = rc.model_origin;
  check_vocab(rc.model, data, vocab_where);
  Model model(rc.model, par.layout_options());
  model.init_weights(rc.train.seed);
  model.set_compute_dtype(parse_compute_dtype(tc.dtype, "[train] dtype"));
  if (model.compute_dtype() != ComputeDtype::kF32 && !cpu::bf16_native() && lead)
    log::warn(std::string("[train] dtype = ") + tc.dtype +
              ": this CPU has no AVX-512 BF16 dot product (or MOE_NO_AVX512_BF16 is set); the "
              "bf16 GEMMs fall back to f32 arithmetic on the same bf16 values: the same "
              "numerics, no speed-up");
  par.attach(model);
  const ParamCounts pc = count_params(rc.model);
  if (!lead) {
    const TrainResult r = train(model, data, tc, &par);
    return r.interrupted ? 130 : 0;
  }
  std::printf("moe train: %.2fM parameters (%.2fM active per token), model from %s, %d threads\n"
              "data: %s (%lld train tokens, %lld held out)",
              double(pc.total) / 1e6, double(pc.active) / 1e6, rc.model_origin.c_str(),
              omp_get_max_threads(), data.name.c_str(),
              static_cast<long long>(data.train_tokens()), static_cast<long long>(data.val_tokens()));
  if (rc.model.vocab_size > data.vocab_size)
    std::printf("\nnote: [model] vocab_size = %lld exceeds the tokenizer's %lld: %lld embedding "
                "rows are never used", static_cast<long long>(rc.model.vocab_size),
                static_cast<long long>(data.vocab_size),
                static_cast<long long>(rc.model.vocab_size - data.vocab_size));
  if (data.entropy_floor >= 0) std::printf(", entropy floor %.4f nats/byte", data.entropy_floor);
  std::printf("\nsteps %lld, batch %lld x seq %lld x accum %lld, lr %.1e (%s), GEMMs in %s, run "
              "folder %s\n",
              static_cast<long long>(tc.steps), static_cast<long long>(tc.batch),
              static_cast<long long>(tc.seq_len), static_cast<long long>(tc.accum), tc.lr,
              tc.schedule.c_str(), compute_dtype_name(model.compute_dtype()),
              tc.out_dir.empty() ? "(none)" : tc.out_dir.c_str());
  if (par.distributed())
    std::printf("parallel: %s, %lld sequences per rank per micro-batch, %s\n",
                par.describe().c_str(), static_cast<long long>(par.local_batch(tc.batch)),
                world->transport_info().c_str());
  std::fflush(stdout);
  if (!tc.out_dir.empty()) {
    std::filesystem::create_directories(tc.out_dir);
    const std::string toml = run_config_to_toml(rc);
    write_file_atomic(tc.out_dir + "/run.toml", {{toml.data(), toml.size()}});
  }
  const TrainResult r = train(model, data, tc, &par);
  if (r.interrupted) {
    std::printf(par.diloco() ? "interrupted: continue with --resume (from the newest checkpoint)\n"
                             : "interrupted: checkpoint written; continue with --resume\n");
    return 130;
  }
  if (r.stopped) {
    std::printf("stopped after %lld steps (checkpoint.stop_after): continue with --resume\n",
                static_cast<long long>(r.steps_run));
    return 0;
  }
  // Sampling needs every expert in this process: with expert parallelism, the final model the
  // run folder holds.
  std::unique_ptr<Model> whole;
  Model* sampler = &model;
  if (samples > 0 && par.ep() > 1) {
    sampler = nullptr;
    if (!tc.out_dir.empty()) {
      ModelConfig cfg;
      std::vector<float> params;
      load_checkpoint(tc.out_dir, &cfg, &params);
      whole = std::make_unique<Model>(cfg);
      whole->params() = std::move(params);
      sampler = whole.get();
    } else {
      std::printf("samples: skipped (expert parallel without a run folder to load the model from)\n");
    }
  }
  if (samples > 0 && sampler) {
    std::printf("samples:\n");
    const char* prompts[] = {"", "7+", "("};
    for (int64_t i = 0; i < samples; ++i) {
      GenerateOptions go;
      go.max_new_tokens = 160;
      go.seed = static_cast<uint64_t>(i);
      const bool builtin = rc.data.source == "builtin";
      const std::string prompt = builtin ? prompts[i % 3] : "";
      const std::vector<int32_t> p = builtin ? byte_encode(prompt) : data.sample_prompt;
      const std::vector<int32_t> out = generate(*sampler, p, go);
      std::printf("---\n%s%s\n", prompt.c_str(), data.decode(out).c_str());
    }
  }
  return 0;
}

// The text goes to stdout; after it, the precision and the speed go to stderr:
//   precision: int8 (...)
//   generate: prompt 5 tokens in 1.2 ms, 200 new tokens in 0.81 s: 245.3 tokens/s
// (tokens/s counts the new tokens after the first, each one decoding step).
int cmd_generate(const std::string& dir, const std::string& prompt, GenerateOptions go,
                 const std::string& dtype) {
  const LoadedModel m = load_model_dir(dir, parse_precision(dtype, "generate"));
  go.int8 = m.int8.get();
  std::fputs(prompt.c_str(), stdout);
  const Tokenizer& tok = *m.tok;
  const std::vector<int32_t> ids = tok.encode(prompt);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t0 = Clock::now();
  Clock::time_point t1 = t0;
  int64_t n = 0;
  generate(*m.model, ids, go, [&](int32_t t) {
    if (n++ == 0) t1 = Clock::now();
    std::fputs(tok.decode({t}).c_str(), stdout);
    std::fflush(stdout);
  });
  const Clock::time_point t2 = Clock::now();
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double prompt_s = std::chrono::duration<double>(t1 - t0).count();
  const double gen_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "precision: %s\n", m.precision.c_str());
  std::fprintf(stderr,
               "generate: prompt %zu tokens in %.1f ms, %lld new tokens in %.3f s: %.1f tokens/s\n",
               ids.empty() ? size_t(1) : ids.size(), prompt_s * 1e3, static_cast<long long>(n),
               prompt_s + gen_s, n > 1 && gen_s > 0 ? double(n - 1) / gen_s : 0.0);
  return 0;
}

// --data: a text file (tokenized with the checkpoint's tokenizer, every window) or a folder made
// by `moe data prepare` with the same tokenizer (its validation split).
int cmd_eval(const std::string& dir, const std::string& data_path, int64_t seq_len, bool json,
             const std::string& dtype) {
  // Default "auto": an int8 folder is evaluated in int8, a float one in fp32.
  const LoadedModel m = load_model_dir(dir, parse_precision(dtype, "eval"));
  if (m.int8) m.model->set_int8(m.int8.get());
  const ModelConfig& cfg = m.model->config();
  const int64_t T = seq_len > 0 ? seq_len : cfg.max_position_embeddings;
  int64_t n = 0;
  double loss = 0;
  std::string what;
  if (std::filesystem::is_directory(data_path)) {
    TokenData data;
    data.dataset = std::make_shared<const TokenDataset>(data_path);
    const std::string spec = data.dataset->tokenizer_spec();
    const bool same = spec == m.tok->spec() ||
                      (spec != "byte" && m.tok->spec() != "byte" &&
                       crc32c_file(spec) == crc32c_file(m.tok->spec()));
    MOE_CHECK(same, "eval", data_path, " was prepared with the tokenizer ", spec,
              " but the checkpoint uses ", m.tok->name(),
              "; prepare the data with the checkpoint's tokenizer.json (moe data prepare FILES "
              "--tokenizer ", dir, ")");
    MOE_CHECK(data.dataset->val_windows(T) > 0, "eval", data_path, ": the validation split has ",
              data.dataset->tokens(Split::kVal), " tokens, fewer than one window of ", T + 1,
              "; use --seq-len smaller");
    loss = evaluate(*m.model, data, T, 8, 0, &n);
    what = "validation split";
  } else {
    const std::vector<int32_t> data = m.tok->encode(read_file(data_path));
    MOE_CHECK(static_cast<int64_t>(data.size()) >= T + 1, "eval", "'", data_path, "' has ",
              data.size(), " tokens (", m.tok->name(), "), fewer than one window of ", T + 1,
              "; use --seq-len smaller");
    loss = evaluate(*m.model, data, T, 8, 0, &n);
    what = "file";
  }
  if (json)
    std::printf(
        "{\"loss\": %.6f, \"tokens\": %lld, \"tokenizer\": \"%s\", \"precision\": "
        "\"%s\", \"weights\": \"%s\"}\n",
        loss, static_cast<long long>(n), m.tok->spec() == "byte" ? "byte" : "bpe",
        m.int8 ? "int8" : "fp32", m.weights.c_str());
  else
    std::printf(
        "loss %.4f nats/token (perplexity %.3f) over %lld tokens of the %s, tokenizer %s, "
        "precision %s\n",
        loss, std::exp(loss), static_cast<long long>(n), what.c_str(), m.tok->name().c_str(),
        m.precision.c_str());
  return 0;
}

}  // namespace

void add_comm_commands(CLI::App& app);    // cmd_comm.cpp: launch, comm-bench
void add_report_commands(CLI::App& app);  // cmd_report.cpp
void add_plan_commands(CLI::App& app);    // cmd_plan.cpp
void add_data_commands(CLI::App& app);    // cmd_data.cpp
void add_info_commands(CLI::App& app);    // cmd_info.cpp
void add_quantize_commands(CLI::App& app);  // cmd_quantize.cpp

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
  shortcut("--data", "data.source",
           "= --data.source (builtin, a text file, or a folder made by moe data prepare)");
  shortcut("--tokenizer", "data.tokenizer", "= --data.tokenizer (byte or a tokenizer.json)");
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
  std::string gen_dtype = "auto", eval_dtype = "auto";
  ge->add_option("--dtype", gen_dtype,
                 "fp32 or int8 (default: as the checkpoint is stored; int8 quantizes a float "
                 "checkpoint on the fly)");

  std::string eval_ckpt, eval_data;
  int64_t eval_seq = 0;
  bool json = false;
  auto* ev = app.add_subcommand("eval", "mean next-token cross-entropy of a checkpoint on a file");
  ev->add_option("--checkpoint", eval_ckpt, "checkpoint directory")->required();
  ev->add_option("--data", eval_data,
                 "text file (tokenized with the checkpoint's tokenizer) or a prepared folder "
                 "(its validation split)")->required();
  ev->add_option("--seq-len", eval_seq, "window length (default max_position_embeddings)");
  ev->add_flag("--json", json, "print {\"loss\": L, \"tokens\": N}");
  ev->add_option("--dtype", eval_dtype,
                 "fp32 or int8 (default: as the checkpoint is stored; int8 quantizes a float "
                 "checkpoint on load, fp32 dequantizes an int8 one)");

  add_comm_commands(app);
  add_report_commands(app);
  add_plan_commands(app);
  add_data_commands(app);
  add_info_commands(app);
  add_quantize_commands(app);

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
    if (*ge) return cmd_generate(ckpt, prompt, go, gen_dtype);
    if (*ev) return cmd_eval(eval_ckpt, eval_data, eval_seq, json, eval_dtype);
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
