// Data commands:
//   moe data prepare INPUT... --tokenizer byte|PATH --out DIR [--val-fraction 0.005]
//                    [--shard-tokens 100M]
//   moe tokenizer train --vocab-size N --out tokenizer.json FILES...
//
// `data prepare` streams every input file (folders recursively, sorted, hidden files skipped)
// through the tokenizer into token shards (data/shards.h). Each file is one document. The
// validation split is the tail of files: after each file, enough of its end goes to val to
// bring the val bytes to val_fraction of all bytes so far (so a big file gives its last
// 0.5%, and among many small files about one in 200 goes to val whole). The cut is moved to a
// line start when one is near, so val begins on a fresh line.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "data/bpe.h"
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
  if (suffix == "K" || suffix == "k") mult = 1e3;
  else if (suffix == "M" || suffix == "m") mult = 1e6;
  else if (suffix == "G" || suffix == "g") mult = 1e9;
  else if (suffix == "T" || suffix == "t") mult = 1e12;
  else MOE_CHECK(suffix.empty(), "cli", flag, " = '", s, "': unknown suffix '", suffix,
                 "'; use K, M, G or T (powers of 1000)");
  const double n = std::floor(v * mult);
  MOE_CHECK(n >= 1 && n < 9e18, "cli", flag, " = '", s, "' must be at least 1");
  return int64_t(n);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  char s[32];
  std::snprintf(s, sizeof s, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return s;
}

std::string plural(int64_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// Regular files named by the inputs, folders walked recursively; sorted within each folder so
// the token order (and so every shard) is the same on every machine. Skips hidden entries and
// anything under `exclude` (the output folder, when it sits inside an input folder).
std::vector<fs::path> collect_files(const std::vector<std::string>& inputs,
                                    const fs::path& exclude) {
  std::vector<fs::path> out;
  const fs::path ex = fs::weakly_canonical(exclude);
  auto excluded = [&](const fs::path& p) {
    const fs::path c = fs::weakly_canonical(p);
    auto [a, b] = std::mismatch(ex.begin(), ex.end(), c.begin(), c.end());
    return a == ex.end();
  };
  for (const auto& in : inputs) {
    std::error_code ec;
    const fs::path p(in);
    MOE_CHECK(fs::exists(p, ec), "data", "input '", in,
              "' does not exist; give text files or folders of them");
    if (fs::is_regular_file(p, ec)) {
      out.push_back(p);
      continue;
    }
    MOE_CHECK(fs::is_directory(p, ec), "data", "input '", in,
              "' is neither a regular file nor a folder");
    std::vector<fs::path> found;
    for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied);
         it != fs::recursive_directory_iterator(); ++it) {
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file() && !excluded(it->path())) found.push_back(it->path());
    }
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
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
    std::fprintf(stderr, "%s%s: %s / %s (%.0f%%), %lld tokens, %s/s, ETA %.0f s%s",
                 tty_ ? "\r" : "", what_, human_bytes(double(done_bytes)).c_str(),
                 human_bytes(double(total_bytes)).c_str(),
                 100.0 * double(done_bytes) / double(std::max<int64_t>(total_bytes, 1)),
                 static_cast<long long>(tokens), human_bytes(rate).c_str(), eta,
                 tty_ ? "   " : "\n");
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

// One split's stream of shards: "train_000000.bin", "train_000001.bin", ...
class SplitWriter {
 public:
  SplitWriter(fs::path dir, std::string prefix, int64_t vocab, int64_t shard_tokens)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), vocab_(vocab),
        shard_tokens_(shard_tokens) {}
  void append(const int32_t* t, int64_t n) {
    while (n > 0) {
      if (!w_) open();
      const int64_t take = std::min(n, shard_tokens_ - w_->size());
      w_->append(t, take);
      t += take, n -= take, total_ += take;
      if (w_->size() == shard_tokens_) close();
    }
  }
  void close() {
    if (!w_) return;
    w_->finish();
    shards_.push_back({name_, w_->size()});
    w_.reset();
  }
  const std::vector<ShardEntry>& shards() const { return shards_; }
  int64_t total() const { return total_; }

 private:
  void open() {
    char name[64];
    std::snprintf(name, sizeof name, "%s_%06zu.bin", prefix_.c_str(), shards_.size());
    name_ = name;
    w_ = std::make_unique<ShardWriter>((dir_ / name_).string(), vocab_);
  }
  fs::path dir_;
  std::string prefix_, name_;
  int64_t vocab_, shard_tokens_, total_ = 0;
  std::unique_ptr<ShardWriter> w_;
  std::vector<ShardEntry> shards_;
};

// Where the val part of a file starts, given the byte count it should get: at the first line
// start (after '\n', before ASCII non-space) within 64 KB after size - want, else exactly
// there moved past UTF-8 continuation bytes.
int64_t val_cut(std::ifstream& f, int64_t size, int64_t want) {
  if (want <= 0) return size;
  const int64_t cut = size - want;
  if (cut <= 0) return 0;
  std::string buf(size_t(std::min<int64_t>(65536, size - cut + 1)), '\0');
  f.seekg(cut - 1);
  f.read(buf.data(), std::streamsize(buf.size()));
  for (size_t i = 1; i < buf.size(); ++i) {
    const auto c = static_cast<unsigned char>(buf[i]);
    if (buf[i - 1] == '\n' && c < 0x80 && !std::isspace(c)) return cut - 1 + int64_t(i);
  }
  int64_t at = cut;
  for (size_t i = 1; i < buf.size() && (static_cast<unsigned char>(buf[i]) & 0xC0) == 0x80; ++i)
    ++at;
  return at;
}

struct PrepareOptions {
  std::vector<std::string> inputs;   // {"data/books", "extra.txt"}
  std::string tokenizer = "byte";    // "byte" or "runs/tok/tokenizer.json"
  std::string out;                   // "data/shakespeare"
  double val_fraction = 0.005;       // of the input bytes
  std::string shard_tokens = "100M"; // tokens per shard
};

void data_prepare(const PrepareOptions& o) {
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction <= 0.5, "data", "--val-fraction = ",
            o.val_fraction, " must be in [0, 0.5]");
  const int64_t shard_tokens = parse_count(o.shard_tokens, "--shard-tokens");
  const std::unique_ptr<Tokenizer> tok = make_tokenizer(o.tokenizer);
  const fs::path out(o.out);
  const std::vector<fs::path> files = collect_files(o.inputs, out);
  MOE_CHECK(!files.empty(), "data", "no input files found in the given inputs; hidden files "
            "and the output folder are skipped");
  std::error_code ec;
  fs::create_directories(out, ec);
  MOE_CHECK(fs::is_directory(out, ec), "data", "cannot create the output folder '", o.out,
            "'; check the path and permissions");

  // A folder holding an old manifest would describe shards we are about to overwrite; drop it
  // first so a crash in between leaves no manifest rather than a wrong one.
  fs::remove(out / "manifest.json", ec);
  DatasetManifest m;
  m.vocab_size = tok->vocab_size();
  m.eos_id = tok->eos_id();
  m.val_fraction = o.val_fraction;
  if (o.tokenizer != "byte") {
    // The dataset keeps its own copy, so it stays usable if the original moves.
    std::ifstream src(tok->spec(), std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
    write_file_atomic((out / "tokenizer.json").string(), {{text.data(), text.size()}});
    m.tokenizer = "tokenizer.json";
  }

  int64_t total_bytes = 0;
  for (const auto& f : files) total_bytes += int64_t(fs::file_size(f));
  SplitWriter train(out, "train", m.vocab_size, shard_tokens);
  SplitWriter val(out, "val", m.vocab_size, shard_tokens);
  Progress progress("moe data prepare");
  int64_t done_bytes = 0, val_bytes = 0;
  const int32_t eos = tok->eos_id();

  // Tokenizes bytes [begin, end) of f into w, in pieces of about 8 MB cut where the tokenizer
  // allows (see Tokenizer::chunkable), then the eos token.
  auto encode_range = [&](std::ifstream& f, const fs::path& path, int64_t begin, int64_t end,
                          SplitWriter& w) {
    if (begin >= end) return;
    f.clear();
    f.seekg(begin);
    std::string buf;
    int64_t pos = begin;
    constexpr int64_t kBlock = int64_t(8) << 20, kMaxCarry = int64_t(64) << 20;
    while (pos < end || !buf.empty()) {
      if (pos < end) {
        const int64_t n = std::min(kBlock, end - pos);
        const size_t at = buf.size();
        buf.resize(at + size_t(n));
        f.read(buf.data() + at, std::streamsize(n));
        MOE_CHECK(f.gcount() == n, "data", path.string(), ": read failed at byte ", pos,
                  "; did the file change while it was being read?");
        pos += n, done_bytes += n;
      }
      size_t cut = buf.size();
      if (pos < end) {
        if (!tok->chunkable()) continue;  // encode the document whole
        cut = last_safe_cut(buf);
        if (cut == 0) {
          if (int64_t(buf.size()) < kMaxCarry) continue;
          cut = buf.size();  // 64 MB without a line break: cut anyway
        }
      }
      const std::vector<int32_t> ids = tok->encode(std::string_view(buf).substr(0, cut));
      w.append(ids.data(), int64_t(ids.size()));
      buf.erase(0, cut);
      progress.update(done_bytes, total_bytes, train.total() + val.total());
    }
    if (eos >= 0) w.append(&eos, 1);
  };

  int64_t seen_bytes = 0;
  for (const auto& path : files) {
    std::ifstream f(path, std::ios::binary);
    MOE_CHECK(f.good(), "data", path.string(), ": cannot open; check permissions");
    const auto size = int64_t(fs::file_size(path));
    seen_bytes += size;
    const int64_t want = std::llround(o.val_fraction * double(seen_bytes)) - val_bytes;
    const int64_t cut = val_cut(f, size, std::min(want, size));
    val_bytes += size - cut;
    encode_range(f, path, 0, cut, train);
    encode_range(f, path, cut, size, val);
  }
  train.close();
  val.close();
  progress.done();
  m.source_files = int64_t(files.size());
  m.source_bytes = total_bytes;
  m.train = train.shards();
  m.val = val.shards();
  MOE_CHECK(train.total() > 0, "data", "the inputs hold no training text (", total_bytes,
            " bytes); give non-empty files or a smaller --val-fraction");
  write_manifest(out.string(), m);

  // Shards of an earlier, larger run in the same folder are no longer listed: remove them.
  const std::regex ours(R"((train|val)_\d{6}\.bin(\.tmp)?)");
  auto listed = [&](const std::string& name) {
    for (const auto* list : {&m.train, &m.val})
      for (const auto& e : *list)
        if (e.file == name) return true;
    return false;
  };
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, ours) && !listed(name)) fs::remove(e.path(), ec);
  }

  const int64_t tokens = train.total() + val.total();
  std::printf("moe data prepare: %s, %s -> %lld tokens (%.2f bytes/token), tokenizer %s\n",
              plural(int64_t(files.size()), "file").c_str(), human_bytes(double(total_bytes)).c_str(),
              static_cast<long long>(tokens), double(total_bytes) / double(std::max<int64_t>(tokens, 1)),
              tok->name().c_str());
  std::printf("  train: %lld tokens in %s; val: %lld tokens in %s (%.2f%%); uint%d tokens%s\n",
              static_cast<long long>(train.total()),
              plural(int64_t(m.train.size()), "shard").c_str(), static_cast<long long>(val.total()),
              plural(int64_t(m.val.size()), "shard").c_str(),
              100.0 * double(val.total()) / double(std::max<int64_t>(tokens, 1)),
              8 * shard_token_bytes(m.vocab_size),
              eos >= 0 ? (", documents end with eos " + std::to_string(eos)).c_str() : "");
  std::printf("  wrote %s\n", (out / "manifest.json").string().c_str());
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
    std::fprintf(stderr, "%smoe tokenizer train: %d / %d merges, %.1f s%s", tty ? "\r" : "",
                 done, wanted, t, open_line ? "   " : "\n");
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
  auto po = std::make_shared<PrepareOptions>();
  auto* prep = data->add_subcommand(
      "prepare", "tokenize text files or folders into token shards with a validation split");
  prep->add_option("inputs", po->inputs, "text files or folders (recursed, sorted)")->required();
  prep->add_option("--tokenizer", po->tokenizer, "byte, or a tokenizer.json (or its folder)")
      ->capture_default_str();
  prep->add_option("--out", po->out, "output folder for the shards and manifest.json")
      ->required();
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
