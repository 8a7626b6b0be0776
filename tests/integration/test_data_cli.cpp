// `moe tokenizer train` and `moe data prepare` run as programs on real files: the shards they
// write must hold exactly the input text (train part + val part of every file, in order).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "data/shards.h"
#include "data/tokenizers.h"
#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::run_moe;

namespace fs = std::filesystem;

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / (name + "_" + std::to_string(getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Deterministic English-like text with repeated words, so BPE has something to learn.
std::string make_text(int lines, int salt) {
  static const char* words[] = {"the", "king", "shall", "speak", "of",    "love",   "and",  "war",
                                "my",  "lord", "good",  "night", "sweet", "prince", "thou", "art"};
  std::string s;
  uint32_t x = 12345u + uint32_t(salt);
  for (int l = 0; l < lines; ++l) {
    const int n = 3 + l % 9;
    for (int w = 0; w < n; ++w) {
      x = x * 1664525u + 1013904223u;
      s += words[(x >> 16) % 16];
      s += w + 1 < n ? " " : (l % 4 == 3 ? ".\n\n" : ",\n");
    }
  }
  return s;
}

std::string split_text(const TokenDataset& ds, const Tokenizer& tok, Split s) {
  std::vector<int32_t> ids(size_t(ds.tokens(s)));
  ds.read(s, 0, ds.tokens(s), ids.data());
  return tok.decode(ids);
}

// Each file must be (its train part) + (its val part), the parts appearing in file order in
// the two streams, each followed by `sep` (the eos text, or nothing).
void expect_streams_hold_files(const std::vector<std::string>& files, const std::string& train,
                               const std::string& val, const std::string& sep) {
  size_t p = 0, q = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& c = files[i];
    bool found = false;
    // The val part is a suffix of the file: try the cut from the end (small val parts first).
    for (size_t k = c.size() + 1; k-- > 0 && !found;) {
      const std::string a = c.substr(0, k), b = c.substr(k);
      const std::string ta = a.empty() ? "" : a + sep, vb = b.empty() ? "" : b + sep;
      if (train.compare(p, ta.size(), ta) == 0 && val.compare(q, vb.size(), vb) == 0) {
        p += ta.size(), q += vb.size(), found = true;
      }
    }
    ASSERT_TRUE(found) << "file " << i << " is not train part + val part at train offset " << p
                       << ", val offset " << q;
  }
  EXPECT_EQ(p, train.size()) << "train holds bytes that no file gave";
  EXPECT_EQ(q, val.size()) << "val holds bytes that no file gave";
}

TEST(DataCli, PrepareFoldersWithTheByteTokenizer) {
  TempDir d("data_cli_byte");
  const std::vector<std::string> texts = {make_text(400, 1), make_text(50, 2), make_text(900, 3)};
  spit(d / "in/a.txt", texts[0]);
  spit(d / "in/sub/b.txt", texts[1]);
  spit(d / "in/.hidden", "never read");
  spit(d / "c.txt", texts[2]);
  const std::string out = (d / "shards").string();
  const std::string inputs = (d / "in").string() + " " + (d / "c.txt").string();

  auto r =
      run_moe("data prepare " + inputs + " --out " + out + " --shard-tokens 2K --val-fraction 0.1");
  ASSERT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("3 files"), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("tokenizer byte"), std::string::npos) << r.second;

  TokenDataset ds(out);
  EXPECT_EQ(ds.tokenizer_spec(), "byte");
  EXPECT_EQ(ds.eos_id(), -1);
  const int64_t total = int64_t(texts[0].size() + texts[1].size() + texts[2].size());
  EXPECT_EQ(ds.tokens(Split::kTrain) + ds.tokens(Split::kVal), total);
  EXPECT_NEAR(double(ds.tokens(Split::kVal)) / double(total), 0.1, 0.02);
  EXPECT_GT(ds.manifest().train.size(), 5u) << "2K-token shards should split the train stream";
  for (const auto& e : ds.manifest().train) EXPECT_LE(e.tokens, 2000);
  // Files in order: a.txt, sub/b.txt (folder, sorted), then c.txt.
  auto tok = make_tokenizer(ds.tokenizer_spec());
  expect_streams_hold_files(texts, split_text(ds, *tok, Split::kTrain),
                            split_text(ds, *tok, Split::kVal), "");

  // Re-preparing into the same folder with bigger shards removes the old, now unlisted ones.
  r = run_moe("data prepare " + inputs + " --out " + out + " --shard-tokens 1M");
  ASSERT_EQ(r.first, 0) << r.second;
  int bins = 0;
  for (const auto& e : fs::directory_iterator(out)) bins += e.path().extension() == ".bin";
  EXPECT_EQ(bins, 2) << "one train and one val shard expected";
  TokenDataset again(out);
  EXPECT_EQ(again.tokens(Split::kTrain) + again.tokens(Split::kVal), total);
}

TEST(DataCli, TokenizerTrainThenPrepareWithEos) {
  TempDir d("data_cli_bpe");
  const std::vector<std::string> texts = {make_text(1500, 7), make_text(300, 8)};
  spit(d / "t1.txt", texts[0]);
  spit(d / "t2.txt", texts[1]);
  const std::string tok_path = (d / "tok/tokenizer.json").string();
  auto r = run_moe("tokenizer train --vocab-size 300 --out " + tok_path + " " +
                   (d / "t1.txt").string() + " " + (d / "t2.txt").string());
  ASSERT_EQ(r.first, 0) << r.second;
  ASSERT_TRUE(fs::exists(tok_path)) << r.second;
  const size_t at = r.second.find(" bytes/token");
  ASSERT_NE(at, std::string::npos) << r.second;
  const double bpt = std::atof(r.second.substr(r.second.rfind(' ', at - 1) + 1).c_str());
  EXPECT_GT(bpt, 2.0) << "a 300-token BPE on repetitive words should compress: " << r.second;

  const std::string out = (d / "shards").string();
  r = run_moe("data prepare " + (d / "t1.txt").string() + " " + (d / "t2.txt").string() +
              " --tokenizer " + (d / "tok").string() + " --out " + out + " --val-fraction 0.05");
  ASSERT_EQ(r.first, 0) << r.second;
  TokenDataset ds(out);
  // The dataset keeps its own copy of the tokenizer.
  EXPECT_EQ(ds.tokenizer_spec(),
            fs::absolute(fs::path(out) / "tokenizer.json").lexically_normal().string());
  EXPECT_EQ(slurp(ds.tokenizer_spec()), slurp(tok_path));
  auto tok = make_tokenizer(ds.tokenizer_spec());
  ASSERT_GE(ds.eos_id(), 0);
  EXPECT_EQ(ds.eos_id(), tok->eos_id());
  EXPECT_EQ(ds.vocab_size(), tok->vocab_size());
  expect_streams_hold_files(texts, split_text(ds, *tok, Split::kTrain),
                            split_text(ds, *tok, Split::kVal), "<|endoftext|>");
  // Windows from the prepared data are valid token ids.
  std::vector<int32_t> w(4 * 33);
  ds.sample_windows(w.data(), 4, 32, 1, 0, 0, 0);
  for (int32_t t : w) ASSERT_TRUE(t >= 0 && t < ds.vocab_size());
}

TEST(DataCli, ErrorsAreOneLineAndNameTheProblem) {
  TempDir d("data_cli_err");
  auto r = run_moe("data prepare " + (d / "missing.txt").string() + " --out " + (d / "o").string());
  EXPECT_EQ(r.first, 1);
  EXPECT_EQ(r.second.rfind("moe: error: [data] input '", 0), 0u) << r.second;
  EXPECT_NE(r.second.find("missing.txt"), std::string::npos) << r.second;
  EXPECT_FALSE(fs::exists(d / "o")) << "a failed prepare should not create the output folder";

  spit(d / "x.txt", "hello\n");
  r = run_moe("data prepare " + (d / "x.txt").string() + " --tokenizer " +
              (d / "none.json").string() + " --out " + (d / "o").string());
  EXPECT_EQ(r.first, 1);
  EXPECT_NE(r.second.find("none.json' is neither"), std::string::npos) << r.second;
  r = run_moe("data prepare " + (d / "x.txt").string() + " --out " + (d / "o").string() +
              " --shard-tokens lots");
  EXPECT_EQ(r.first, 1);
  EXPECT_NE(r.second.find("--shard-tokens = 'lots'"), std::string::npos) << r.second;
  r = run_moe("tokenizer train --vocab-size 10 --out " + (d / "t.json").string() + " " +
              (d / "x.txt").string());
  EXPECT_EQ(r.first, 1);
  EXPECT_NE(r.second.find("--vocab-size = 10"), std::string::npos) << r.second;
}

fs::path shared_data_file(const std::string& name) {
  if (const char* env = std::getenv("MOE_SHARED_DATA"))
    if (fs::exists(fs::path(env) / name)) return fs::path(env) / name;
  const fs::path p = fs::path(MOE_SOURCE_DIR) / ".." / "shared" / "data" / name;
  return fs::exists(p) ? p : fs::path();
}

TEST(DataCli, Tinyshakespeare) {
  const fs::path src = shared_data_file("tinyshakespeare.txt");
  if (src.empty())
    GTEST_SKIP() << "tinyshakespeare.txt not found in $MOE_SHARED_DATA or " MOE_SOURCE_DIR
                    "/../shared/data; put it there to run this test";
  const std::string text = slurp(src);
  TempDir d("data_cli_shk");
  const std::string tok_path = (d / "tokenizer.json").string();
  auto r = run_moe("tokenizer train --vocab-size 1024 --out " + tok_path + " " + src.string());
  ASSERT_EQ(r.first, 0) << r.second;
  const size_t at = r.second.find(" bytes/token");
  ASSERT_NE(at, std::string::npos) << r.second;
  const double bpt = std::atof(r.second.substr(r.second.rfind(' ', at - 1) + 1).c_str());
  EXPECT_GT(bpt, 2.2) << r.second;  // measured 2.43 bytes/token with 1024 tokens on this text

  for (const std::string& spec : {std::string("byte"), tok_path}) {
    const std::string out = (d / (spec == "byte" ? "shards_byte" : "shards_bpe")).string();
    r = run_moe("data prepare " + src.string() + " --tokenizer " + spec + " --out " + out);
    ASSERT_EQ(r.first, 0) << r.second;
    TokenDataset ds(out);
    auto tok = make_tokenizer(ds.tokenizer_spec());
    const std::string sep = tok->eos_id() >= 0 ? "<|endoftext|>" : "";
    const std::string train = split_text(ds, *tok, Split::kTrain);
    const std::string val = split_text(ds, *tok, Split::kVal);
    expect_streams_hold_files({text}, train, val, sep);
    const double frac = double(val.size() - sep.size()) / double(text.size());
    EXPECT_NEAR(frac, 0.005, 0.001) << spec;
    EXPECT_TRUE(text[text.size() - (val.size() - sep.size()) - 1] == '\n')
        << "val should start on a fresh line";
    EXPECT_GT(ds.val_windows(64), 10) << spec;
  }
}

}  // namespace
}  // namespace moe
