// Token shards: the on-disk form of a tokenized corpus, written by `moe data prepare` and
// memory-mapped by the trainer.
//
// Shard file (all integers little-endian), version 1:
//
//   offset size  field
//   0      8     magic        "MOETOKS\0"
//   8      4     version      1
//   12     4     header_size  64 (the payload starts here)
//   16     4     token_bytes  2 (uint16 tokens, vocab_size <= 65536) or 4 (uint32 tokens)
//   20     4     vocab_size   every token is < vocab_size
//   24     8     n_tokens     payload = n_tokens * token_bytes bytes, nothing after it
//   32     4     payload_crc  CRC-32C (core/checksum.h) of the payload bytes
//   36     24    reserved     zero
//   60     4     header_crc   CRC-32C of bytes [0, 60); fixed at this place in every version
//   64     ...   payload      n_tokens tokens
//
// A dataset is a directory holding shards and manifest.json:
//
//   {"format": "moe-token-shards", "version": 1,
//    "tokenizer": "byte" | "tokenizer.json" (a copy kept next to the shards),
//    "vocab_size": 256, "eos_id": -1, "val_fraction": 0.005,
//    "sources": {"files": 3, "bytes": 1115394},
//    "train": {"tokens": 1109817, "shards": [{"file": "train_000000.bin", "tokens": 1109817}]},
//    "val":   {"tokens": 5577,    "shards": [{"file": "val_000000.bin",   "tokens": 5577}]}}
//
// Each split is one token stream: its shards concatenated in manifest order. Documents inside
// it are separated by eos_id when the tokenizer has one. Training windows are drawn uniformly
// from the whole stream and may cross shard (and document) boundaries: shards are a storage
// unit, not a semantic one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

inline constexpr char kShardMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'S', '\0'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardHeaderSize = 64;

// 2 for vocab_size <= 65536, else 4.
int shard_token_bytes(int64_t vocab_size);

// Streams tokens into path + ".tmp" with a running checksum; finish() writes the header,
// fsyncs and renames over path (then fsyncs the directory), so a reader never sees a torn
// shard. Destroyed without finish(), it removes the temporary file.
class ShardWriter {
 public:
  ShardWriter(const std::string& path, int64_t vocab_size);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(const int32_t* tokens, int64_t n);  // throws on a token outside [0, vocab_size)
  void finish();
  int64_t size() const { return n_tokens_; }

 private:
  void flush();
  std::string path_, tmp_;
  int fd_ = -1;
  int64_t vocab_size_;
  int token_bytes_;
  int64_t n_tokens_ = 0;
  uint32_t crc_ = 0;
  std::vector<uint8_t> buf_;  // packed tokens not yet written
};

// Writes one whole shard (ShardWriter in one call).
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size);

// A shard memory-mapped read-only. The constructor validates everything it can (size, magic,
// header checksum, version, field ranges, exact file length and, when verify_checksum, the
// payload checksum) and throws moe::Error naming the file and what is wrong.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path, bool verify_checksum = true);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  int64_t size() const { return n_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  int token_bytes() const { return token_bytes_; }
  const std::string& path() const { return path_; }
  // out[0, n) = tokens [pos, pos + n); throws if the range leaves the shard.
  void read(int64_t pos, int64_t n, int32_t* out) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* payload_ = nullptr;
  int64_t n_tokens_ = 0, vocab_size_ = 0;
  int token_bytes_ = 0;
};

struct ShardEntry {
  std::string file;    // "train_000000.bin", relative to the dataset directory
  int64_t tokens = 0;  // 1000000
};

struct DatasetManifest {
  std::string tokenizer = "byte";  // "byte" or a tokenizer.json path relative to the directory
  int64_t vocab_size = 256;
  int32_t eos_id = -1;             // -1: documents are simply concatenated
  double val_fraction = 0.005;
  int64_t source_files = 0, source_bytes = 0;
  std::vector<ShardEntry> train, val;
};

void write_manifest(const std::string& dir, const DatasetManifest& m);  // atomically
DatasetManifest read_manifest(const std::string& dir);  // throws naming the file and key

enum class Split { kTrain, kVal };

// Start of window b of the micro-batch (step, micro, rank): uniform in [0, n_tokens - T - 1]
// from Philox keyed by a hash of (seed, step, micro, rank). A pure function, so resuming at a
// step needs nothing but the step, and each rank and micro-batch draws its own windows.
int64_t window_start(int64_t n_tokens, int64_t T, uint64_t seed, int64_t step, int64_t micro,
                     int rank, int64_t b);

// The shards of a prepared directory, memory-mapped. All methods are const and thread-safe.
class TokenDataset {
 public:
  // Opens dir/manifest.json and every shard it lists; checks that each shard's header agrees
  // with the manifest (token count, vocab) and, when verify_checksums, its payload checksum.
  explicit TokenDataset(const std::string& dir, bool verify_checksums = true);
  ~TokenDataset();

  const std::string& dir() const { return dir_; }
  const DatasetManifest& manifest() const { return manifest_; }
  int64_t vocab_size() const { return manifest_.vocab_size; }
  int32_t eos_id() const { return manifest_.eos_id; }
  // "byte" or the absolute path of the tokenizer.json; pass it to make_tokenizer().
  std::string tokenizer_spec() const;
  int64_t tokens(Split s) const;

  // out[0, n) = tokens [pos, pos + n) of the split's stream, across shard boundaries.
  void read(Split s, int64_t pos, int64_t n, int32_t* out) const;

  // out (B, T+1): row b = train tokens [start, start + T + 1) with start = window_start(...,
  // b): inputs are row[0, T), targets row[1, T+1). Throws if the train split is shorter than
  // T + 1 tokens.
  void sample_windows(int32_t* out, int64_t B, int64_t T, uint64_t seed, int64_t step,
                      int64_t micro, int rank) const;

  // Validation in order: window i = val tokens [i*T, i*T + T + 1), i < val_windows(T).
  int64_t val_windows(int64_t T) const;
  // out (B, T+1) = windows first .. first+B-1; returns how many exist (rows past it untouched).
  int64_t val_batch(int32_t* out, int64_t B, int64_t T, int64_t first) const;

 private:
  struct Stream {
    std::vector<std::unique_ptr<ShardReader>> shards;
    std::vector<int64_t> begin;  // (n_shards + 1) prefix sums of shard sizes
  };
  const Stream& stream(Split s) const { return s == Split::kTrain ? train_ : val_; }

  std::string dir_;
  DatasetManifest manifest_;
  Stream train_, val_;
};

}  // namespace moe
