#include "data/shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/checksum.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace moe {

// Payloads are memcpy'd to and from memory, which is right only on little-endian hosts (all
// the CPUs this project targets).
static_assert(std::endian::native == std::endian::little, "shards assume a little-endian host");

namespace {

namespace fs = std::filesystem;

constexpr size_t kHeaderCrcAt = 60;

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
void store_le(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    MOE_CHECK(w > 0, "shard", path, ": write failed: ", std::strerror(errno),
              "; check free disk space");
    p += w, n -= size_t(w);
  }
}

std::string hex32(uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof s, "%08x", v);
  return s;
}

}  // namespace

int shard_token_bytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

// ---- Writing ------------------------------------------------------------------------------

ShardWriter::ShardWriter(const std::string& path, int64_t vocab_size)
    : path_(path), tmp_(path + ".tmp"), vocab_size_(vocab_size),
      token_bytes_(shard_token_bytes(vocab_size)) {
  MOE_CHECK(vocab_size > 0 && vocab_size <= (int64_t(1) << 31), "shard", path,
            ": vocab_size = ", vocab_size, " is outside [1, 2^31]");
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOE_CHECK(fd_ >= 0, "shard", "cannot create ", tmp_, ": ", std::strerror(errno),
            "; check that the directory exists and is writable");
  // The header is written last, once the count and checksum are known.
  const uint8_t zeros[kShardHeaderSize] = {};
  write_all(fd_, zeros, sizeof zeros, tmp_);
  buf_.reserve(size_t(1) << 22);
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void ShardWriter::flush() {
  if (buf_.empty()) return;
  crc_ = crc32c(buf_.data(), buf_.size(), crc_);
  write_all(fd_, buf_.data(), buf_.size(), tmp_);
  buf_.clear();
}

void ShardWriter::append(const int32_t* tokens, int64_t n) {
  MOE_CHECK(fd_ >= 0, "shard", path_, ": append after finish()");
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    MOE_CHECK(t >= 0 && t < vocab_size_, "shard", path_, ": token ", t, " at position ",
              n_tokens_ + i, " is outside the vocab [0, ", vocab_size_,
              "); the tokenizer and the vocab size disagree");
    const size_t at = buf_.size();
    buf_.resize(at + size_t(token_bytes_));
    if (token_bytes_ == 2)
      store_le(buf_.data() + at, uint16_t(t));
    else
      store_le(buf_.data() + at, uint32_t(t));
    if (buf_.size() >= (size_t(1) << 22)) flush();
  }
  n_tokens_ += n;
}

void ShardWriter::finish() {
  MOE_CHECK(fd_ >= 0, "shard", path_, ": finish() called twice");
  flush();
  uint8_t h[kShardHeaderSize] = {};
  std::memcpy(h, kShardMagic, 8);
  store_le<uint32_t>(h + 8, kShardVersion);
  store_le<uint32_t>(h + 12, kShardHeaderSize);
  store_le<uint32_t>(h + 16, uint32_t(token_bytes_));
  store_le<uint32_t>(h + 20, uint32_t(vocab_size_));
  store_le<uint64_t>(h + 24, uint64_t(n_tokens_));
  store_le<uint32_t>(h + 32, crc_);
  store_le<uint32_t>(h + kHeaderCrcAt, crc32c(h, kHeaderCrcAt));
  ssize_t w;
  do w = ::pwrite(fd_, h, sizeof h, 0);
  while (w < 0 && errno == EINTR);
  MOE_CHECK(w == ssize_t(sizeof h), "shard", tmp_, ": header write failed: ",
            std::strerror(errno), "; check free disk space");
  const bool synced = ::fsync(fd_) == 0;
  const int e = errno;
  ::close(fd_);
  fd_ = -1;
  if (!synced) {
    ::unlink(tmp_.c_str());
    MOE_FAIL("shard", "cannot flush ", tmp_, ": ", std::strerror(e), "; check free disk space");
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e2 = errno;
    ::unlink(tmp_.c_str());
    MOE_FAIL("shard", "cannot rename ", tmp_, " to ", path_, ": ", std::strerror(e2));
  }
  const std::string dir = fs::path(path_).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // makes the rename durable
    ::close(dfd);
  }
}

void write_shard(const std::string& path, const std::vector<int32_t>& tokens,
                 int64_t vocab_size) {
  ShardWriter w(path, vocab_size);
  w.append(tokens.data(), int64_t(tokens.size()));
  w.finish();
}

// ---- Reading ------------------------------------------------------------------------------

ShardReader::ShardReader(const std::string& path, bool verify_checksum) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, "shard", path, ": cannot open: ", std::strerror(errno),
            "; check the path, or re-run `moe data prepare`");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    MOE_FAIL("shard", path, ": cannot stat: ", std::strerror(e));
  }
  const auto file_size = uint64_t(st.st_size);
  if (file_size < kShardHeaderSize) {
    ::close(fd);
    MOE_FAIL("shard", path, ": truncated: the file has ", file_size,
             " bytes, fewer than the ", kShardHeaderSize,
             "-byte shard header; re-run `moe data prepare`");
  }
  map_ = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    MOE_FAIL("shard", path, ": mmap failed: ", std::strerror(map_errno));
  }
  map_size_ = file_size;
  // From here a throw must unmap: the destructor does not run for a throwing constructor.
  try {
    const auto* h = static_cast<const uint8_t*>(map_);
    MOE_CHECK(std::memcmp(h, kShardMagic, 8) == 0, "shard", path,
              ": bad magic (not a moe token shard; expected \"MOETOKS\" in the first bytes)");
    const uint32_t header_crc = load_le<uint32_t>(h + kHeaderCrcAt);
    MOE_CHECK(crc32c(h, kHeaderCrcAt) == header_crc, "shard", path,
              ": header checksum mismatch (stored ", hex32(header_crc), ", computed ",
              hex32(crc32c(h, kHeaderCrcAt)), "): the header is corrupt; re-run `moe data prepare`");
    const uint32_t version = load_le<uint32_t>(h + 8);
    MOE_CHECK(version == kShardVersion, "shard", path, ": format version ", version,
              "; this build reads version ", kShardVersion,
              "; re-run `moe data prepare` with this build");
    const uint32_t header_size = load_le<uint32_t>(h + 12);
    token_bytes_ = int(load_le<uint32_t>(h + 16));
    vocab_size_ = load_le<uint32_t>(h + 20);
    const uint64_t n = load_le<uint64_t>(h + 24);
    MOE_CHECK(header_size == kShardHeaderSize, "shard", path, ": header_size = ", header_size,
              ", expected ", kShardHeaderSize);
    MOE_CHECK(token_bytes_ == 2 || token_bytes_ == 4, "shard", path,
              ": token_bytes = ", token_bytes_, ", expected 2 or 4");
    MOE_CHECK(vocab_size_ > 0 && token_bytes_ == shard_token_bytes(vocab_size_), "shard", path,
              ": vocab_size = ", vocab_size_, " does not fit token_bytes = ", token_bytes_);
    const uint64_t payload = file_size - kShardHeaderSize;
    MOE_CHECK(n <= payload / uint64_t(token_bytes_) && n * uint64_t(token_bytes_) == payload,
              "shard", path, ": ", payload < n * uint64_t(token_bytes_) ? "truncated" : "trailing bytes",
              ": the header says ", n, " tokens (", n * uint64_t(token_bytes_),
              " payload bytes) but the file has ", payload,
              " payload bytes; re-run `moe data prepare`");
    n_tokens_ = int64_t(n);
    payload_ = h + kShardHeaderSize;
    if (verify_checksum) {
      const uint32_t want = load_le<uint32_t>(h + 32), got = crc32c(payload_, payload);
      MOE_CHECK(want == got, "shard", path, ": payload checksum mismatch (stored ", hex32(want),
                ", computed ", hex32(got), "): the token data is corrupt; re-run `moe data prepare`");
    }
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

ShardReader::~ShardReader() {
  if (map_) ::munmap(map_, map_size_);
}

void ShardReader::read(int64_t pos, int64_t n, int32_t* out) const {
  MOE_CHECK(pos >= 0 && n >= 0 && pos + n <= n_tokens_, "shard", path_, ": read of [", pos, ", ",
            pos + n, ") leaves the shard of ", n_tokens_, " tokens");
  if (token_bytes_ == 2) {
    const uint8_t* p = payload_ + size_t(pos) * 2;
    for (int64_t i = 0; i < n; ++i) out[i] = load_le<uint16_t>(p + size_t(i) * 2);
  } else {
    const uint8_t* p = payload_ + size_t(pos) * 4;
    for (int64_t i = 0; i < n; ++i) out[i] = int32_t(load_le<uint32_t>(p + size_t(i) * 4));
  }
}

// ---- Manifest -----------------------------------------------------------------------------

void write_manifest(const std::string& dir, const DatasetManifest& m) {
  using nlohmann::json;
  auto split = [](const std::vector<ShardEntry>& shards) {
    json list = json::array();
    int64_t total = 0;
    for (const auto& s : shards) {
      list.push_back({{"file", s.file}, {"tokens", s.tokens}});
      total += s.tokens;
    }
    return json{{"tokens", total}, {"shards", list}};
  };
  const json j = {{"format", "moe-token-shards"},
                  {"version", 1},
                  {"tokenizer", m.tokenizer},
                  {"vocab_size", m.vocab_size},
                  {"eos_id", m.eos_id},
                  {"val_fraction", m.val_fraction},
                  {"sources", {{"files", m.source_files}, {"bytes", m.source_bytes}}},
                  {"train", split(m.train)},
                  {"val", split(m.val)}};
  const std::string text = j.dump(1) + "\n";
  write_file_atomic((fs::path(dir) / "manifest.json").string(), {{text.data(), text.size()}});
}

DatasetManifest read_manifest(const std::string& dir) {
  using nlohmann::json;
  const std::string path = (fs::path(dir) / "manifest.json").string();
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "dataset", path, ": cannot open; is '", dir,
            "' a folder made by `moe data prepare`?");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    MOE_FAIL("dataset", path, ": not valid JSON (", e.what(), "); re-run `moe data prepare`");
  }
  auto need = [&](const json& obj, const char* key, const char* where) -> const json& {
    MOE_CHECK(obj.is_object() && obj.contains(key), "dataset", path, ": missing key \"", where,
              key, "\"");
    return obj.at(key);
  };
  auto get_int = [&](const json& obj, const char* key, const char* where) {
    const json& v = need(obj, key, where);
    MOE_CHECK(v.is_number_integer(), "dataset", path, ": \"", where, key,
              "\" must be an integer, not ", v.dump());
    return v.get<int64_t>();
  };
  MOE_CHECK(need(j, "format", "") == "moe-token-shards", "dataset", path,
            ": \"format\" is ", j["format"].dump(), ", expected \"moe-token-shards\"");
  const int64_t version = get_int(j, "version", "");
  MOE_CHECK(version == 1, "dataset", path, ": manifest version ", version,
            "; this build reads version 1; re-run `moe data prepare`");
  DatasetManifest m;
  const json& tok = need(j, "tokenizer", "");
  MOE_CHECK(tok.is_string(), "dataset", path, ": \"tokenizer\" must be a string");
  m.tokenizer = tok.get<std::string>();
  m.vocab_size = get_int(j, "vocab_size", "");
  MOE_CHECK(m.vocab_size > 0 && m.vocab_size <= (int64_t(1) << 31), "dataset", path,
            ": vocab_size = ", m.vocab_size, " is outside [1, 2^31]");
  m.eos_id = int32_t(get_int(j, "eos_id", ""));
  m.val_fraction = j.value("val_fraction", 0.0);
  if (j.contains("sources")) {
    m.source_files = j["sources"].value("files", int64_t(0));
    m.source_bytes = j["sources"].value("bytes", int64_t(0));
  }
  for (const char* name : {"train", "val"}) {
    const json& s = need(j, name, "");
    const json& list = need(s, "shards", name == std::string("train") ? "train." : "val.");
    MOE_CHECK(list.is_array(), "dataset", path, ": \"", name, ".shards\" must be an array");
    auto& out = name == std::string("train") ? m.train : m.val;
    for (const json& e : list) {
      ShardEntry se;
      const json& file = need(e, "file", "shards[].");
      MOE_CHECK(file.is_string(), "dataset", path, ": a \"", name,
                ".shards[].file\" is not a string");
      se.file = file.get<std::string>();
      se.tokens = get_int(e, "tokens", "shards[].");
      out.push_back(se);
    }
  }
  return m;
}

// ---- Dataset ------------------------------------------------------------------------------

int64_t window_start(int64_t n_tokens, int64_t T, uint64_t seed, int64_t step, int64_t micro,
                     int rank, int64_t b) {
  MOE_CHECK(T >= 1 && n_tokens >= T + 1, "data", "cannot cut a window of T + 1 = ", T + 1,
            " tokens from ", n_tokens, " tokens; use a shorter sequence length or more data");
  // splitmix64 folds the coordinates into one Philox key; distinct keys give independent
  // streams, and the window index b is the counter.
  auto mix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  uint64_t key = mix(seed);
  key = mix(key ^ uint64_t(step));
  key = mix(key ^ uint64_t(micro));
  key = mix(key ^ uint64_t(uint32_t(rank)));
  static const uint64_t stream = stream_id("data.train_windows");
  uint32_t r[4];
  Philox::generate(key, stream, uint64_t(b), r);
  const uint64_t u = (uint64_t(r[0]) << 32) | r[1];
  // The modulo bias is about n_tokens / 2^64: below 2^-24 even for 2^40 tokens.
  return int64_t(u % uint64_t(n_tokens - T));
}

TokenDataset::TokenDataset(const std::string& dir, bool verify_checksums)
    : dir_(dir), manifest_(read_manifest(dir)) {
  const std::string where = (fs::path(dir) / "manifest.json").string();
  auto open = [&](const std::vector<ShardEntry>& entries, Stream& s) {
    s.begin.assign(1, 0);
    for (const auto& e : entries) {
      const std::string path = (fs::path(dir) / e.file).string();
      auto r = std::make_unique<ShardReader>(path, verify_checksums);
      MOE_CHECK(r->size() == e.tokens, "dataset", path, ": holds ", r->size(), " tokens but ",
                where, " lists ", e.tokens, "; the folder mixes two runs of `moe data prepare`,"
                " re-run it into an empty folder");
      MOE_CHECK(r->vocab_size() == manifest_.vocab_size, "dataset", path, ": vocab_size ",
                r->vocab_size(), " but ", where, " says ", manifest_.vocab_size);
      s.begin.push_back(s.begin.back() + r->size());
      s.shards.push_back(std::move(r));
    }
  };
  open(manifest_.train, train_);
  open(manifest_.val, val_);
  MOE_CHECK(tokens(Split::kTrain) > 0, "dataset", where,
            ": the train split is empty; give `moe data prepare` more text");
}

TokenDataset::~TokenDataset() = default;

std::string TokenDataset::tokenizer_spec() const {
  if (manifest_.tokenizer == "byte") return "byte";
  const fs::path p(manifest_.tokenizer);
  return (p.is_absolute() ? p : fs::absolute(fs::path(dir_) / p)).lexically_normal().string();
}

int64_t TokenDataset::tokens(Split s) const { return stream(s).begin.back(); }

void TokenDataset::read(Split s, int64_t pos, int64_t n, int32_t* out) const {
  const Stream& st = stream(s);
  MOE_CHECK(pos >= 0 && n >= 0 && pos + n <= st.begin.back(), "dataset", dir_, ": read of [",
            pos, ", ", pos + n, ") leaves the ", s == Split::kTrain ? "train" : "val",
            " split of ", st.begin.back(), " tokens");
  // The shard holding pos: the last one whose begin is <= pos (empty shards are skipped).
  size_t k = size_t(std::upper_bound(st.begin.begin(), st.begin.end(), pos) - st.begin.begin()) - 1;
  while (n > 0) {
    const int64_t off = pos - st.begin[k];
    const int64_t take = std::min(n, st.shards[k]->size() - off);
    st.shards[k]->read(off, take, out);
    out += take, pos += take, n -= take, ++k;
  }
}

void TokenDataset::sample_windows(int32_t* out, int64_t B, int64_t T, uint64_t seed,
                                  int64_t step, int64_t micro, int rank) const {
  const int64_t n = tokens(Split::kTrain);
  MOE_CHECK(n >= T + 1, "dataset", dir_, ": the train split has ", n,
            " tokens, fewer than one window of T + 1 = ", T + 1,
            "; use a shorter sequence length or prepare more text");
  for (int64_t b = 0; b < B; ++b)
    read(Split::kTrain, window_start(n, T, seed, step, micro, rank, b), T + 1,
         out + b * (T + 1));
}

int64_t TokenDataset::val_windows(int64_t T) const {
  MOE_CHECK(T >= 1, "dataset", "window length T = ", T, " must be at least 1");
  const int64_t n = tokens(Split::kVal);
  return n >= T + 1 ? (n - 1) / T : 0;
}

int64_t TokenDataset::val_batch(int32_t* out, int64_t B, int64_t T, int64_t first) const {
  const int64_t count = std::max<int64_t>(0, std::min(B, val_windows(T) - first));
  for (int64_t i = 0; i < count; ++i) read(Split::kVal, (first + i) * T, T + 1, out + i * (T + 1));
  return count;
}

}  // namespace moe
