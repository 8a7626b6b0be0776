// Byte-level BPE: GPT-2 pre-tokenization, training, exact round trips, tokenizer.json I/O.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/bpe.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string> out;
  for (auto v : gpt2_pretokenize(text)) out.emplace_back(v);
  return out;
}

TEST(Pretokenize, FollowsTheGpt2Pattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world's  123 !!\n\n x"),
            (V{"Hello", " world", "'s", " ", " 123", " !!", "\n\n", " x"}));
  EXPECT_EQ(split("I'll go\tnow  "), (V{"I", "'ll", " go", "\t", "now", "  "}));
  EXPECT_EQ(split("caf\xC3\xA9 na\xC3\xAFve"), (V{"caf\xC3\xA9", " na\xC3\xAFve"}));  // UTF-8 letters
  EXPECT_EQ(split("a\xFF\xFE b"), (V{"a", "\xFF\xFE", " b"}));  // invalid bytes are "other"
  EXPECT_EQ(split(""), V{});
}

TEST(Pretokenize, PiecesConcatenateToTheInput) {
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(size_t(1 + trial % 97), '\0');
    for (size_t i = 0; i < s.size(); ++i)
      s[i] = char(uint8_t(uniform01(3, uint64_t(trial), i) * 256));
    std::string joined;
    for (auto v : gpt2_pretokenize(s)) {
      EXPECT_FALSE(v.empty());
      joined += v;
    }
    ASSERT_EQ(joined, s);
  }
}

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / (name + "_" + std::to_string(getpid()));
}

// A GPT-2-style file written by hand: Ġ is the space byte.
TEST(Bpe, LoadsAHuggingFaceFileAndAppliesMergesByRank) {
  std::ostringstream vocab;
  vocab << "{";
  // The 256 byte symbols, id = byte (the order does not matter to the format).
  const std::string bytes_json = [] {
    std::string s;
    for (int b = 0; b < 256; ++b) {
      std::string sym;
      // Same map as GPT-2: printable Latin-1 stands for itself.
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      static int extra = 256;
      if (b == 0) extra = 256;
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(extra++);
      if (cp < 0x80) {
        sym = std::string(1, char(cp));
      } else {
        sym = {char(0xC0 | cp >> 6), char(0x80 | (cp & 0x3F))};
      }
      if (sym == "\"" || sym == "\\") sym.insert(sym.begin(), '\\');
      if (b) s += ',';
      s += '"';
      s += sym;
      s += "\":";
      s += std::to_string(b);
    }
    return s;
  }();
  const fs::path p = temp_file("tok.json");
  std::ofstream(p) << R"({"version":"1.0","added_tokens":[{"id":260,"content":"<|endoftext|>","special":true}],
    "normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false},
    "decoder":{"type":"ByteLevel"},
    "model":{"type":"BPE","vocab":{)"
                   << bytes_json << R"(,"Ġt":256,"he":257,"Ġthe":258,"in":259,"<|endoftext|>":260},
    "merges":["h e","Ġ t",["Ġt","he"],"i n"]}})";
  const BpeTokenizer t = BpeTokenizer::load(p.string());
  EXPECT_EQ(t.vocab_size(), 261);
  EXPECT_EQ(t.encode(" the"), (std::vector<int32_t>{258}));
  EXPECT_EQ(t.encode("the thin"), (std::vector<int32_t>{'t', 257, 256, 'h', 259}));
  EXPECT_EQ(t.encode("a<|endoftext|>b"), (std::vector<int32_t>{'a', 260, 'b'}));
  EXPECT_EQ(t.decode({258, 260, 'x'}), " the<|endoftext|>x");
  EXPECT_THROW(t.decode({261}), Error);

  // Saving and loading again gives the same tokenizer.
  const fs::path q = temp_file("tok2.json");
  t.save(q.string());
  EXPECT_TRUE(BpeTokenizer::load(q.string()) == t);
  fs::remove(p), fs::remove(q);
}

TEST(Bpe, LoadErrorsNameTheFileAndKey) {
  const fs::path p = temp_file("bad.json");
  auto expect_error = [&](const std::string& body, const std::string& needle) {
    std::ofstream(p) << body;
    try {
      BpeTokenizer::load(p.string());
      ADD_FAILURE() << "no error for " << body;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  expect_error("{", "not valid JSON");
  expect_error(R"({"version":"1.0"})", "model");
  expect_error(R"({"model":{"type":"WordPiece"}})", "model.type");
  expect_error(R"({"pre_tokenizer":{"type":"Whitespace"},"model":{"type":"BPE"}})", "ByteLevel");
  expect_error(R"({"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}})",
               "byte");
  fs::remove(p);
  EXPECT_THROW(BpeTokenizer::load("/nonexistent/tokenizer.json"), Error);
}

std::string random_bytes(uint64_t seed, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = char(uint8_t(uniform01(seed, 9, i) * 256));
  return s;
}

void expect_round_trips(const BpeTokenizer& t, const std::string& text) {
  const std::vector<int32_t> ids = t.encode(text);
  for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
  ASSERT_EQ(t.decode(ids), text);
}

TEST(Bpe, TrainsAndRoundTripsEveryByteSequence) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "the cat sat on the mat; the dog ate " + std::to_string(i) + "\n";
  BpeTrainOptions opt;
  opt.vocab_size = 300;
  const BpeTokenizer t = BpeTokenizer::train({text}, opt);
  EXPECT_EQ(t.vocab_size(), 300);
  EXPECT_EQ(t.token_bytes(299), "<|endoftext|>");
  // Learned merges compress the training text well below one token per byte.
  EXPECT_LT(double(t.encode(text).size()), 0.4 * double(text.size()));
  expect_round_trips(t, text);
  for (int n = 0; n < 300; ++n) expect_round_trips(t, random_bytes(uint64_t(n), size_t(n)));
  std::string all(256, '\0');
  for (int b = 0; b < 256; ++b) all[size_t(b)] = char(b);
  expect_round_trips(t, all);
  expect_round_trips(t, "ends with spaces   \n\n\t ");
  // Deterministic: training twice gives the same tokenizer.
  EXPECT_TRUE(BpeTokenizer::train({text}, opt) == t);
  BpeTrainOptions too_small;
  too_small.vocab_size = 100;
  EXPECT_THROW(BpeTokenizer::train({text}, too_small), Error);
}

TEST(Bpe, TinyShakespeareRoundTripsAndSavesIdentically) {
  const char* dir = std::getenv("MOE_SHARED_DATA");
  const fs::path path = fs::path(dir ? dir : "../shared/data") / "tinyshakespeare.txt";
  if (!fs::exists(path)) GTEST_SKIP() << "skipped: " << path << " is absent (the shared data folder)";
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  BpeTrainOptions opt;
  opt.vocab_size = 1024;
  const BpeTokenizer t = BpeTokenizer::train({text}, opt);
  ASSERT_EQ(t.vocab_size(), 1024);
  const std::vector<int32_t> ids = t.encode(text);
  EXPECT_EQ(t.decode(ids), text);
  // English with 1024 tokens: over two bytes per token (2.43 measured).
  EXPECT_GT(double(text.size()) / double(ids.size()), 2.2);
  for (int n = 0; n < 200; ++n) expect_round_trips(t, random_bytes(uint64_t(1000 + n), size_t(n * 7)));

  const fs::path p = temp_file("shakespeare_tokenizer.json");
  t.save(p.string());
  const BpeTokenizer back = BpeTokenizer::load(p.string());
  EXPECT_TRUE(back == t);
  EXPECT_EQ(back.encode(text), ids);
  fs::remove(p);
}

}  // namespace
}  // namespace moe
