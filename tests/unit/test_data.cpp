// Token shards, the memory-mapped dataset, window sampling and the tokenizer factory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "data/bpe.h"
#include "data/shards.h"
#include "data/tokenizers.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

// A fresh folder per test, removed at the end.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() /
              (name + "_" + std::to_string(getpid()) + "_" + std::to_string(counter_++))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The message of the moe::Error that fn throws ("" if it throws none).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<int32_t> ramp(int64_t n, int64_t vocab, int64_t first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((first + i) % vocab);
  return t;
}

TEST(Shards, RoundTripU16AndU32) {
  TempDir d("shards_rt");
  for (int64_t vocab : {256ll, 65536ll, 65537ll, 200000ll}) {
    const std::string path = d.file("s.bin");
    const std::vector<int32_t> tokens = ramp(12345, vocab, vocab - 7);  // includes vocab - 1
    write_shard(path, tokens, vocab);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    const int tb = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(int64_t(fs::file_size(path)), int64_t(kShardHeaderSize) + 12345 * tb);
    ShardReader r(path);
    EXPECT_EQ(r.size(), 12345);
    EXPECT_EQ(r.vocab_size(), vocab);
    EXPECT_EQ(r.token_bytes(), tb);
    std::vector<int32_t> back(tokens.size());
    r.read(0, r.size(), back.data());
    EXPECT_EQ(back, tokens) << "vocab " << vocab;
    std::vector<int32_t> mid(3);
    r.read(100, 3, mid.data());
    EXPECT_EQ(mid, std::vector<int32_t>(tokens.begin() + 100, tokens.begin() + 103));
    EXPECT_NE(error_of([&] { r.read(12343, 3, mid.data()); }).find("leaves the shard"),
              std::string::npos);
  }
}

TEST(Shards, HeaderLayoutIsAsDocumented) {
  TempDir d("shards_hdr");
  write_shard(d.file("s.bin"), {1, 2, 3}, 300);
  const std::string b = slurp(d.file("s.bin"));
  ASSERT_EQ(b.size(), 64u + 6u);
  EXPECT_EQ(b.substr(0, 8), std::string("MOETOKS\0", 8));
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int k = 3; k >= 0; --k) v = v << 8 | uint8_t(b[at + size_t(k)]);
    return v;
  };
  EXPECT_EQ(u32(8), 1u);    // version
  EXPECT_EQ(u32(12), 64u);  // header size
  EXPECT_EQ(u32(16), 2u);   // uint16 tokens
  EXPECT_EQ(u32(20), 300u);
  EXPECT_EQ(u32(24), 3u);
  EXPECT_EQ(u32(28), 0u);   // high word of the count
  EXPECT_EQ(uint8_t(b[64]), 1);
  EXPECT_EQ(uint8_t(b[66]), 2);
}

TEST(Shards, WriterRejectsTokensOutsideTheVocab) {
  TempDir d("shards_vocab");
  const std::string msg = error_of([&] { write_shard(d.file("s.bin"), {1, 300, 2}, 256); });
  EXPECT_NE(msg.find("token 300 at position 1"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(d.file("s.bin")));
  EXPECT_FALSE(fs::exists(d.file("s.bin.tmp"))) << "an abandoned writer leaves its temp file";
  EXPECT_NE(error_of([&] { write_shard(d.file("t.bin"), {-1}, 256); }), "");
}

TEST(Shards, EveryTruncationIsAnErrorNamingTheFile) {
  TempDir d("shards_trunc");
  const std::string good = d.file("good.bin"), bad = d.file("bad.bin");
  write_shard(good, ramp(1000, 50000), 50000);
  const std::string bytes = slurp(good);
  for (size_t len = 0; len < bytes.size(); len += (len < 80 ? 1 : 97)) {
    spit(bad, bytes.substr(0, len));
    const std::string msg = error_of([&] { ShardReader r(bad); });
    ASSERT_NE(msg.find(bad), std::string::npos) << "length " << len << ": " << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << "length " << len << ": " << msg;
  }
  spit(bad, bytes + "x");
  EXPECT_NE(error_of([&] { ShardReader r(bad); }).find("trailing bytes"), std::string::npos);
}

TEST(Shards, EveryHeaderByteFlipIsDetected) {
  TempDir d("shards_flip");
  const std::string good = d.file("good.bin"), bad = d.file("bad.bin");
  write_shard(good, ramp(500, 1000), 1000);
  const std::string bytes = slurp(good);
  for (size_t at = 0; at < kShardHeaderSize; ++at) {
    for (uint8_t mask : {uint8_t(0x01), uint8_t(0x80)}) {
      std::string b = bytes;
      b[at] = char(uint8_t(b[at]) ^ mask);
      spit(bad, b);
      const std::string msg = error_of([&] { ShardReader r(bad); });
      ASSERT_NE(msg.find(bad), std::string::npos) << "byte " << at << ": " << msg;
      if (at < 8)
        EXPECT_NE(msg.find("bad magic"), std::string::npos) << msg;
      else
        EXPECT_NE(msg.find("header checksum"), std::string::npos) << "byte " << at << ": " << msg;
    }
  }
}

TEST(Shards, PayloadFlipFailsTheChecksumUnlessSkipped) {
  TempDir d("shards_payload");
  const std::string path = d.file("s.bin");
  write_shard(path, ramp(5000, 256), 256);
  std::string b = slurp(path);
  b[64 + 2 * 4321 + 1] ^= 0x10;
  spit(path, b);
  const std::string msg = error_of([&] { ShardReader r(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("payload checksum mismatch"), std::string::npos) << msg;
  ShardReader unchecked(path, /*verify_checksum=*/false);  // the fast path still opens it
  EXPECT_EQ(unchecked.size(), 5000);
}

// A header that is valid but from another version: rewrite the version and its checksum.
TEST(Shards, OtherVersionSaysSo) {
  TempDir d("shards_version");
  const std::string path = d.file("s.bin");
  write_shard(path, {1, 2}, 256);
  std::string b = slurp(path);
  b[8] = 2;
  // Recompute the header checksum the way the format says: CRC-32C of bytes [0, 60).
  const uint32_t crc = crc32c(b.data(), 60);
  for (int k = 0; k < 4; ++k) b[60 + size_t(k)] = char(uint8_t(crc >> (8 * k)));
  spit(path, b);
  const std::string msg = error_of([&] { ShardReader r(path); });
  EXPECT_NE(msg.find("format version 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(Shards, NotAShardAndMissingFile) {
  TempDir d("shards_misc");
  spit(d.file("text.bin"), std::string(100, 'a'));
  EXPECT_NE(error_of([&] { ShardReader r(d.file("text.bin")); }).find("bad magic"),
            std::string::npos);
  const std::string msg = error_of([&] { ShardReader r(d.file("nope.bin")); });
  EXPECT_NE(msg.find("nope.bin: cannot open"), std::string::npos) << msg;
}

TEST(Shards, EmptyShardRoundTrips) {
  TempDir d("shards_empty");
  write_shard(d.file("e.bin"), {}, 256);
  ShardReader r(d.file("e.bin"));
  EXPECT_EQ(r.size(), 0);
}

// ---- Sampling and the dataset ----------------------------------------------------------------

TEST(Sampling, IsAPureFunctionOfItsArguments) {
  const int64_t n = 100000, T = 64;
  std::set<int64_t> seen;
  for (int64_t b = 0; b < 64; ++b) {
    const int64_t s = window_start(n, T, 7, 123, 2, 1, b);
    EXPECT_EQ(s, window_start(n, T, 7, 123, 2, 1, b));
    seen.insert(s);
  }
  EXPECT_GT(seen.size(), 60u) << "window starts within a batch should rarely repeat";
  // Every coordinate changes the draw.
  const int64_t base = window_start(n, T, 7, 123, 2, 1, 0);
  int differ = 0;
  differ += window_start(n, T, 8, 123, 2, 1, 0) != base;
  differ += window_start(n, T, 7, 124, 2, 1, 0) != base;
  differ += window_start(n, T, 7, 123, 3, 1, 0) != base;
  differ += window_start(n, T, 7, 123, 2, 0, 0) != base;
  EXPECT_EQ(differ, 4);
}

TEST(Sampling, StartsCoverTheWholeRangeAndNeverLeaveIt) {
  // n - T = 5 possible starts: all must appear, none outside.
  const int64_t n = 69, T = 64;
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 200; ++step) {
    const int64_t s = window_start(n, T, 1, step, 0, 0, 0);
    ASSERT_GE(s, 0);
    ASSERT_LE(s + T + 1, n);
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(window_start(65, 64, 1, 5, 0, 0, 3), 0);  // exactly one window fits
  EXPECT_NE(error_of([] { window_start(64, 64, 1, 0, 0, 0, 0); }).find("T + 1 = 65"),
            std::string::npos);
}

// A dataset of several shards whose tokens are a ramp mod vocab across the whole stream, so
// a window is inside the data exactly when its tokens are consecutive.
DatasetManifest write_ramp_dataset(const fs::path& dir, const std::vector<int64_t>& train_sizes,
                                   const std::vector<int64_t>& val_sizes, int64_t vocab) {
  DatasetManifest m;
  m.vocab_size = vocab;
  int64_t pos = 0;
  for (size_t k = 0; k < train_sizes.size(); ++k) {
    const std::string name = "train_" + std::to_string(k) + ".bin";
    write_shard((dir / name).string(), ramp(train_sizes[k], vocab, pos), vocab);
    m.train.push_back({name, train_sizes[k]});
    pos += train_sizes[k];
  }
  pos = 0;
  for (size_t k = 0; k < val_sizes.size(); ++k) {
    const std::string name = "val_" + std::to_string(k) + ".bin";
    write_shard((dir / name).string(), ramp(val_sizes[k], vocab, pos), vocab);
    m.val.push_back({name, val_sizes[k]});
    pos += val_sizes[k];
  }
  write_manifest(dir.string(), m);
  return m;
}

TEST(Dataset, WindowsAreInsideTheDataAndCrossShards) {
  TempDir d("dataset_windows");
  const int64_t vocab = 60000;  // bigger than the data, so a ramp never wraps
  write_ramp_dataset(d.path(), {1000, 0, 37, 5000, 1}, {300, 200}, vocab);
  TokenDataset ds(d.path().string());
  EXPECT_EQ(ds.tokens(Split::kTrain), 6038);
  EXPECT_EQ(ds.tokens(Split::kVal), 500);
  const int64_t B = 16, T = 128;
  std::vector<int32_t> a(size_t(B * (T + 1))), b(a.size());
  bool crossed = false;
  for (int64_t step = 0; step < 100; ++step) {
    ds.sample_windows(a.data(), B, T, 3, step, 0, 0);
    ds.sample_windows(b.data(), B, T, 3, step, 0, 0);
    ASSERT_EQ(a, b) << "step " << step;
    for (int64_t r = 0; r < B; ++r) {
      const int32_t* w = a.data() + r * (T + 1);
      EXPECT_EQ(w[0], window_start(6038, T, 3, step, 0, 0, r));
      for (int64_t i = 1; i <= T; ++i) ASSERT_EQ(w[i], w[i - 1] + 1) << "step " << step;
      ASSERT_LT(w[T], 6038);
      crossed |= (w[0] < 1000 && w[T] >= 1000) || (w[0] < 1037 && w[T] >= 1037);
    }
  }
  EXPECT_TRUE(crossed) << "no window crossed a shard boundary in 1600 draws";
  ds.sample_windows(b.data(), B, T, 3, 0, 1, 0);  // another micro-batch
  ds.sample_windows(a.data(), B, T, 3, 0, 0, 0);
  EXPECT_NE(a, b);
  ds.sample_windows(b.data(), B, T, 3, 0, 0, 1);  // another rank
  EXPECT_NE(a, b);
}

TEST(Dataset, ValWindowsAreConsecutiveAndStopAtTheEnd) {
  TempDir d("dataset_val");
  write_ramp_dataset(d.path(), {100}, {300, 200}, 1000);
  TokenDataset ds(d.path().string());
  const int64_t T = 64;
  EXPECT_EQ(ds.val_windows(T), (500 - 1) / 64);  // 7
  std::vector<int32_t> out(size_t(4 * (T + 1)), -1);
  EXPECT_EQ(ds.val_batch(out.data(), 4, T, 0), 4);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t i = 0; i <= T; ++i) ASSERT_EQ(out[size_t(r * (T + 1) + i)], r * T + i);
  std::fill(out.begin(), out.end(), -1);
  EXPECT_EQ(ds.val_batch(out.data(), 4, T, 4), 3);  // windows 4, 5, 6
  EXPECT_EQ(out[size_t(2 * (T + 1) + T)], 6 * T + T);
  EXPECT_EQ(out[size_t(3 * (T + 1))], -1) << "a row past the end was written";
  EXPECT_EQ(ds.val_batch(out.data(), 4, T, 7), 0);
  EXPECT_EQ(ds.val_windows(1000), 0);
}

TEST(Dataset, ManifestAndShardDisagreementsAreErrors) {
  TempDir d("dataset_bad");
  DatasetManifest m = write_ramp_dataset(d.path(), {100, 50}, {10}, 256);
  const std::string manifest = d.file("manifest.json");

  m.train[1].tokens = 49;
  write_manifest(d.path().string(), m);
  std::string msg = error_of([&] { TokenDataset ds(d.path().string()); });
  EXPECT_NE(msg.find("train_1.bin: holds 50 tokens"), std::string::npos) << msg;

  m.train[1] = {"missing.bin", 50};
  write_manifest(d.path().string(), m);
  msg = error_of([&] { TokenDataset ds(d.path().string()); });
  EXPECT_NE(msg.find("missing.bin: cannot open"), std::string::npos) << msg;

  spit(manifest, "{\"format\": \"moe-token-shards\", \"version\": 1}");
  msg = error_of([&] { TokenDataset ds(d.path().string()); });
  EXPECT_NE(msg.find("missing key \"tokenizer\""), std::string::npos) << msg;
  EXPECT_NE(msg.find(manifest), std::string::npos) << msg;

  spit(manifest, "{not json");
  EXPECT_NE(error_of([&] { TokenDataset ds(d.path().string()); }).find("not valid JSON"),
            std::string::npos);

  fs::remove(manifest);
  msg = error_of([&] { TokenDataset ds(d.path().string()); });
  EXPECT_NE(msg.find("moe data prepare"), std::string::npos) << msg;

  // A corrupt shard is reported through the dataset too.
  write_ramp_dataset(d.path(), {100, 50}, {10}, 256);
  std::string b = slurp(d.file("train_1.bin"));
  b[70] ^= 1;
  spit(d.file("train_1.bin"), b);
  msg = error_of([&] { TokenDataset ds(d.path().string()); });
  EXPECT_NE(msg.find("train_1.bin: payload checksum mismatch"), std::string::npos) << msg;
}

TEST(Dataset, TooShortForOneWindow) {
  TempDir d("dataset_short");
  write_ramp_dataset(d.path(), {10}, {}, 256);
  TokenDataset ds(d.path().string());
  std::vector<int32_t> out(64);
  const std::string msg = error_of([&] { ds.sample_windows(out.data(), 1, 10, 0, 0, 0, 0); });
  EXPECT_NE(msg.find("10 tokens, fewer than one window of T + 1 = 11"), std::string::npos) << msg;
  EXPECT_EQ(ds.val_windows(4), 0);
}

// ---- Tokenizers ------------------------------------------------------------------------------

TEST(Tokenizers, ByteRoundTripsEveryByte) {
  auto tok = make_tokenizer("byte");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  const std::vector<int32_t> ids = tok->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  EXPECT_EQ(ids[255], 255);
  EXPECT_EQ(tok->decode(ids), all);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->eos_id(), -1);
  EXPECT_EQ(tok->spec(), "byte");
  EXPECT_NE(error_of([&] { tok->decode({65, 256}); }).find("token id 256"), std::string::npos);
}

TEST(Tokenizers, FactoryErrorsNameTheSpec) {
  TempDir d("tok_factory");
  std::string msg = error_of([] { make_tokenizer(""); });
  EXPECT_NE(msg.find("empty tokenizer spec"), std::string::npos) << msg;
  msg = error_of([] { make_tokenizer("bytes"); });
  EXPECT_NE(msg.find("'bytes' is neither"), std::string::npos) << msg;
  msg = error_of([&] { make_tokenizer(d.path().string()); });
  EXPECT_NE(msg.find("has no tokenizer.json"), std::string::npos) << msg;
  spit(d.file("tokenizer.json"), "{\"model\": {\"type\": \"WordPiece\"}}");
  msg = error_of([&] { make_tokenizer(d.path().string()); });
  EXPECT_NE(msg.find("only byte-level BPE"), std::string::npos) << msg;
  spit(d.file("tokenizer.json"), "[1, 2");
  msg = error_of([&] { make_tokenizer(d.file("tokenizer.json")); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

TEST(Tokenizers, BpeFromFileOrFolderWithEos) {
  TempDir d("tok_bpe");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the cat sat on the mat " + std::to_string(i % 7) + "\n";
  BpeTrainOptions opt;
  opt.vocab_size = 300;
  BpeTokenizer::train({text}, opt).save(d.file("tokenizer.json"));
  auto a = make_tokenizer(d.file("tokenizer.json"));
  auto b = make_tokenizer(d.path().string());  // the folder
  EXPECT_EQ(a->spec(), b->spec());
  EXPECT_TRUE(fs::path(a->spec()).is_absolute());
  // Training stops early once no pair repeats, so the vocab may end below 300.
  const int v = a->vocab_size();
  EXPECT_GT(v, 257);
  EXPECT_LE(v, 300);
  EXPECT_EQ(a->eos_id(), v - 1);  // specials come last
  EXPECT_TRUE(a->chunkable());
  EXPECT_LT(a->encode(text).size(), text.size() / 3);
  EXPECT_EQ(a->decode(a->encode(text)), text);
  EXPECT_EQ(a->encode("<|endoftext|>"), std::vector<int32_t>{v - 1});
  EXPECT_EQ(make_tokenizer(a->spec())->encode(text), a->encode(text));  // spec rebuilds it
}

TEST(Tokenizers, EncodingInSafePiecesMatchesEncodingWhole) {
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += (i % 5 == 0 ? "\n\n  indented " : "Line ") + std::to_string(i) + " of it's text.\r\n";
  BpeTrainOptions opt;
  opt.vocab_size = 400;
  BpeTokenizer bpe = BpeTokenizer::train({text}, opt);
  const std::vector<int32_t> whole = bpe.encode(text);
  for (size_t limit : {50u, 333u, 1000u, 4096u}) {
    std::vector<int32_t> pieces;
    std::string_view rest = text;
    while (!rest.empty()) {
      size_t cut = rest.size() > limit ? last_safe_cut(rest.substr(0, limit)) : rest.size();
      if (cut == 0) cut = last_safe_cut(rest.substr(0, rest.size() - 1));
      if (cut == 0) cut = rest.size();
      const auto ids = bpe.encode(rest.substr(0, cut));
      pieces.insert(pieces.end(), ids.begin(), ids.end());
      rest.remove_prefix(cut);
    }
    EXPECT_EQ(pieces, whole) << "pieces of " << limit;
  }
  EXPECT_EQ(last_safe_cut("ab\n cd"), 0u);   // a space after the newline: not safe
  EXPECT_EQ(last_safe_cut("ab\ncd\n"), 3u);  // the final newline has nothing after it
  EXPECT_EQ(last_safe_cut("ab\n\xC3\xA9"), 0u);
}

}  // namespace
}  // namespace moe
