// Data commands:
//   moe data prepare INPUT... --tokenizer byte|PATH --out DIR [--val-fraction 0.005]
//                    [--shard-tokens 100M]
//   moe tokenizer train --vocab-size N --out tokenizer.json FILES...
//
// `data prepare` is data/prepare.h's prepare_dataset (also used by the trainer to cache a text
// file) with a progress line and a summary.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/format.h"
#include "core/safetensors.h"
#include "data/bpe.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/tokenizers.h"

namespace {

using namespace moe;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// "100M" -> 100000000 (K, M, G, T are powers of 1000; a plain number is taken as is).
int64_t parse_count(const std::string& s, const char* flag) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    MOE_FAIL("cli", flag, " = '", s, "' is not a number; write e.g. 100M, 2G or 5000000");
  }
  std::string suffix = s.substr(used);
  double mult = 1;
  if (suffix == "K" || suffix == "k")
    mult = 1e3;
  else if (suffix == "M" || suffix == "m")
    mult = 1e6;
  else if (suffix == "G" || suffix == "g")
    mult = 1e9;
  else if (suffix == "T" || suffix == "t")
    mult = 1e12;
  else
    MOE_CHECK(suffix.empty(), "cli", flag, " = '", s, "': unknown suffix '", suffix,
              "'; use K, M, G or T (powers of 1000)");
  const double n = std::floor(v * mult);
  MOE_CHECK(n >= 1 && n < 9e18, "cli", flag, " = '", s, "' must be at least 1");
  return int64_t(n);
}

std::string plural(int64_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// A progress line on stderr, only for inputs that take more than a second: rewritten in place
// on a terminal, one line every 10 s otherwise (logs stay short).
class Progress {
 public:
  explicit Progress(const char* what) : what_(what), tty_(::isatty(2) != 0) {}
  void update(int64_t done_bytes, int64_t total_bytes, int64_t tokens) {
    const double t = std::chrono::duration<double>(Clock::now() - start_).count();
    if (t < 2.0 || t - last_ < (tty_ ? 0.25 : 10.0)) return;
    last_ = t;
    const double rate = double(done_bytes) / t;
    const double eta = rate > 0 ? double(total_bytes - done_bytes) / rate : 0;
    std::fprintf(
        stderr, "%s%s: %s / %s (%.0f%%), %lld tokens, %s/s, ETA %.0f s%s", tty_ ? "\r" : "", what_,
        human_bytes(double(done_bytes)).c_str(), human_bytes(double(total_bytes)).c_str(),
        100.0 * double(done_bytes) / double(std::max<int64_t>(total_bytes, 1)),
        static_cast<long long>(tokens), human_bytes(rate).c_str(), eta, tty_ ? "   " : "\n");
    shown_ = true;
  }
  void done() {
    if (shown_ && tty_) std::fputc('\n', stderr);
  }

 private:
  const char* what_;
  bool tty_;
  bool shown_ = false;
  double last_ = -1e9;  // the first line comes at 2 s
  Clock::time_point start_ = Clock::now();
};

struct PrepareArgs {
  std::vector<std::string> inputs;    // {"data/books", "extra.txt"}
  std::string tokenizer = "byte";     // "byte" or "runs/tok/tokenizer.json"
  std::string out;                    // "data/shakespeare"
  double val_fraction = 0.005;        // of the input bytes
  std::string shard_tokens = "100M";  // tokens per shard
};

void data_prepare(const PrepareArgs& a) {
  MOE_CHECK(a.val_fraction >= 0 && a.val_fraction <= 0.5, "data",
            "--val-fraction = ", a.val_fraction, " must be in [0, 0.5]");
  PrepareOptions o;
  o.inputs = a.inputs;
  o.tokenizer = a.tokenizer;
  o.out = a.out;
  o.val_fraction = a.val_fraction;
  o.shard_tokens = parse_count(a.shard_tokens, "--shard-tokens");
  Progress progress("moe data prepare");
  o.progress = [&](int64_t done, int64_t total, int64_t tokens) {
    progress.update(done, total, tokens);
  };
  const PrepareResult r = prepare_dataset(o);
  progress.done();
  const DatasetManifest& m = r.manifest;
  const int64_t tokens = r.train_tokens + r.val_tokens;
  std::printf("moe data prepare: %s, %s -> %lld tokens (%.2f bytes/token), tokenizer %s\n",
              plural(r.files, "file").c_str(), human_bytes(double(r.bytes)).c_str(),
              static_cast<long long>(tokens),
              double(r.bytes) / double(std::max<int64_t>(tokens, 1)), r.tokenizer_name.c_str());
  std::printf(
      "  train: %lld tokens in %s; val: %lld tokens in %s (%.2f%%); uint%d tokens%s\n",
      static_cast<long long>(r.train_tokens), plural(int64_t(m.train.size()), "shard").c_str(),
      static_cast<long long>(r.val_tokens), plural(int64_t(m.val.size()), "shard").c_str(),
      100.0 * double(r.val_tokens) / double(std::max<int64_t>(tokens, 1)),
      8 * shard_token_bytes(m.vocab_size),
      m.eos_id >= 0 ? (", documents end with eos " + std::to_string(m.eos_id)).c_str() : "");
  std::printf("  wrote %s\n", (fs::path(a.out) / "manifest.json").string().c_str());
}

struct TokenizerTrainOptions {
  std::vector<std::string> files;  // {"../shared/data/tinyshakespeare.txt"}
  int vocab_size = 0;              // 4096
  std::string out;                 // "tok/tokenizer.json"
};

void tokenizer_train(const TokenizerTrainOptions& o) {
  MOE_CHECK(o.vocab_size >= 257, "tokenizer", "--vocab-size = ", o.vocab_size,
            " must be at least 257 (256 byte tokens + <|endoftext|>)");
  MOE_CHECK(!o.out.empty(), "tokenizer", "--out is empty; give the tokenizer.json to write");
  const std::vector<fs::path> files = collect_files(o.files, fs::path(o.out));
  MOE_CHECK(!files.empty(), "tokenizer", "no input files found; hidden files are skipped");
  std::vector<std::string> texts;
  int64_t bytes = 0;
  for (const auto& p : files) {
    std::ifstream f(p, std::ios::binary);
    MOE_CHECK(f.good(), "tokenizer", p.string(), ": cannot open; check permissions");
    texts.emplace_back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bytes += int64_t(texts.back().size());
  }
  const auto t0 = Clock::now();
  BpeTrainOptions opt;
  opt.vocab_size = o.vocab_size;
  const bool tty = ::isatty(2) != 0;
  double last = -1;
  bool open_line = false;  // a \r progress line waits for its newline
  opt.progress = [&](int done, int wanted) {
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    if (done < wanted && t - last < (tty ? 0.25 : 10.0)) return;
    last = t;
    open_line = tty && done < wanted;
    std::fprintf(stderr, "%smoe tokenizer train: %d / %d merges, %.1f s%s", tty ? "\r" : "", done,
                 wanted, t, open_line ? "   " : "\n");
  };
  std::fprintf(stderr, "moe tokenizer train: counting pre-tokens in %s...\n",
               human_bytes(double(bytes)).c_str());
  const BpeTokenizer bpe = BpeTokenizer::train(texts, opt);
  if (open_line) std::fputc('\n', stderr);  // training stopped early: no pair repeats
  const double train_s = std::chrono::duration<double>(Clock::now() - t0).count();
  // Check before saving that the tokenizer reproduces the training text exactly.
  int64_t tokens = 0;
  for (const auto& text : texts) {
    const std::vector<int32_t> ids = bpe.encode(text);
    MOE_CHECK(bpe.decode(ids) == text, "tokenizer",
              "internal error: the trained tokenizer does not round-trip its training text");
    tokens += int64_t(ids.size());
  }
  const fs::path parent = fs::path(o.out).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  bpe.save(o.out);
  std::printf("moe tokenizer train: %s, %s, vocab %d in %.1f s\n",
              plural(int64_t(files.size()), "file").c_str(), human_bytes(double(bytes)).c_str(),
              bpe.vocab_size(), train_s);
  std::printf("  %.3f bytes/token on the training text (%lld tokens; byte tokenizer: 1.000)\n",
              double(bytes) / double(std::max<int64_t>(tokens, 1)), static_cast<long long>(tokens));
  std::printf("  wrote %s\n", o.out.c_str());
}

}  // namespace

void add_data_commands(CLI::App& app) {
  auto* data = app.add_subcommand("data", "prepare token shards for training");
  data->require_subcommand(1);
  auto po = std::make_shared<PrepareArgs>();
  auto* prep = data->add_subcommand(
      "prepare", "tokenize text files or folders into token shards with a validation split");
  prep->add_option("inputs", po->inputs, "text files or folders (recursed, sorted)")->required();
  prep->add_option("--tokenizer", po->tokenizer, "byte, or a tokenizer.json (or its folder)")
      ->capture_default_str();
  prep->add_option("--out", po->out, "output folder for the shards and manifest.json")->required();
  prep->add_option("--val-fraction", po->val_fraction, "fraction of bytes held out for val")
      ->capture_default_str();
  prep->add_option("--shard-tokens", po->shard_tokens, "tokens per shard (K, M, G suffixes)")
      ->capture_default_str();
  prep->callback([po] { data_prepare(*po); });

  auto* tokc = app.add_subcommand("tokenizer", "train byte-level BPE tokenizers");
  tokc->require_subcommand(1);
  auto to = std::make_shared<TokenizerTrainOptions>();
  auto* tt = tokc->add_subcommand(
      "train", "learn a byte-level BPE and save it as a Hugging Face tokenizer.json");
  tt->add_option("files", to->files, "training text files or folders")->required();
  tt->add_option("--vocab-size", to->vocab_size, "total vocab (256 bytes + merges + specials)")
      ->required();
  tt->add_option("--out", to->out, "tokenizer.json to write")->required();
  tt->callback([to] { tokenizer_train(*to); });
}
