#include "data/prepare.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <regex>

#include "core/error.h"
#include "core/safetensors.h"
#include "data/tokenizers.h"

namespace moe {

namespace fs = std::filesystem;

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

namespace {

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

}  // namespace

PrepareResult prepare_dataset(const PrepareOptions& o) {
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction <= 0.5, "data", "--val-fraction = ",
            o.val_fraction, " must be in [0, 0.5]");
  MOE_CHECK(o.shard_tokens >= 1, "data", "shard_tokens = ", o.shard_tokens, " must be at least 1");
  const int64_t shard_tokens = o.shard_tokens;
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
      if (o.progress) o.progress(done_bytes, total_bytes, train.total() + val.total());
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

  PrepareResult r;
  r.manifest = m;
  r.files = int64_t(files.size());
  r.bytes = total_bytes;
  r.train_tokens = train.total();
  r.val_tokens = val.total();
  r.tokenizer_name = tok->name();
  return r;
}

}  // namespace moe
