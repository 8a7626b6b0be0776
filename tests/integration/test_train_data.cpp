// Issue #4: the trainer on real data. Text files (byte or BPE, cached as shards in the run
// folder), prepared shard folders (their tokenizer and validation split), exact resume on
// them, the tokenizer carried into run folder and checkpoints, the vocab check, `moe eval` and
// `moe generate` with the checkpoint's tokenizer, and the per-layer MoE records.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/error.h"
#include "data/bpe.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/tokenizers.h"
#include "model/model.h"
#include "run_binary.h"
#include "tiny_model.h"
#include "train/report.h"
#include "train/trainer.h"

namespace moe {
namespace {

using moe::testing::run_moe;
using moe::testing::tiny_moe;

namespace fs = std::filesystem;
using nlohmann::json;

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / (name + "_" + std::to_string(getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& s) const { return path_ / s; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << s;
}

// English-like lines with repeated words (something for BPE to learn), deterministic.
std::string make_text(int lines, uint32_t seed) {
  static const char* words[] = {"the", "king", "shall", "speak", "of",    "love",   "and",  "war",
                                "my",  "lord", "good",  "night", "sweet", "prince", "thou", "art"};
  std::string s;
  uint32_t x = seed;
  for (int l = 0; l < lines; ++l) {
    const int n = 3 + l % 7;
    for (int w = 0; w < n; ++w) {
      x = x * 1664525u + 1013904223u;
      s += words[(x >> 16) % 16];
      s += w + 1 < n ? " " : ".\n";
    }
  }
  return s;
}

std::vector<json> read_metrics(const fs::path& dir) {
  std::vector<json> out;
  std::ifstream f(dir / "metrics.jsonl");
  for (std::string line; std::getline(f, line);) out.push_back(json::parse(line));
  return out;
}

TrainConfig base(const fs::path& dir, int64_t steps) {
  TrainConfig tc;
  tc.steps = steps;
  tc.batch = 4;
  tc.seq_len = 32;
  tc.warmup = 5;
  tc.log_every = 10;
  tc.eval_tokens = 512;
  tc.progress = "none";
  tc.out_dir = dir.string();
  tc.guard.spike_zscore = 0;
  return tc;
}

std::vector<int32_t> split_tokens(const TokenDataset& ds, Split s) {
  std::vector<int32_t> t(size_t(ds.tokens(s)));
  ds.read(s, 0, ds.tokens(s), t.data());
  return t;
}

// A text file through [data] gives exactly the streams `moe data prepare` would, cached in
// the run folder and rebuilt when the file changes.
TEST(TrainData, TextFileIsTokenizedIntoACacheLikeDataPrepare) {
  TempDir d("train_data_text");
  const fs::path text = d / "corpus.txt";
  spit(text, make_text(3000, 1));
  DataConfig dc;
  dc.source = text.string();
  dc.val_fraction = 0.1;
  const TokenData a = load_data(dc, (d / "run/data").string());
  ASSERT_TRUE(a.dataset);
  EXPECT_EQ(a.tokenizer_spec, "byte");
  EXPECT_EQ(a.vocab_size, 256);
  EXPECT_EQ(a.train_tokens() + a.val_tokens(), int64_t(fs::file_size(text)));
  EXPECT_NEAR(double(a.val_tokens()) / double(fs::file_size(text)), 0.1, 0.01);

  PrepareOptions po;
  po.inputs = {text.string()};
  po.out = (d / "prepared").string();
  po.val_fraction = 0.1;
  prepare_dataset(po);
  const TokenDataset ref(po.out);
  EXPECT_EQ(split_tokens(*a.dataset, Split::kTrain), split_tokens(ref, Split::kTrain));
  EXPECT_EQ(split_tokens(*a.dataset, Split::kVal), split_tokens(ref, Split::kVal));

  // Reused while nothing changed: the shard file is not rewritten.
  const fs::path shard = d / "run/data/train_000000.bin";
  const auto t0 = fs::last_write_time(shard);
  const TokenData b = load_data(dc, (d / "run/data").string());
  EXPECT_EQ(fs::last_write_time(shard), t0);
  EXPECT_EQ(b.train_tokens(), a.train_tokens());
  // A changed file (other size) or another val_fraction rebuilds it.
  spit(text, make_text(2000, 2));
  const TokenData c = load_data(dc, (d / "run/data").string());
  EXPECT_EQ(c.train_tokens() + c.val_tokens(), int64_t(fs::file_size(text)));
  dc.val_fraction = 0.2;
  const TokenData e = load_data(dc, (d / "run/data").string());
  EXPECT_NEAR(double(e.val_tokens()) / double(fs::file_size(text)), 0.2, 0.01);
  // No run folder: a temporary cache that is gone once the shards are mapped.
  const TokenData f = load_data(dc);
  EXPECT_EQ(f.train_tokens(), e.train_tokens());
  std::vector<int32_t> w(4 * 33);
  f.dataset->sample_windows(w.data(), 4, 32, 1, 0, 0, 0);  // still readable
}

TEST(TrainData, SourceErrorsNameTheKeyAndPlace) {
  TempDir d("train_data_err");
  DataConfig dc;
  dc.source = (d / "nope.txt").string();
  dc.where["source"] = "run.toml:7";
  try {
    load_data(dc);
    FAIL() << "no error for a missing source";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("[data] source"), std::string::npos) << msg;
    EXPECT_NE(msg.find("run.toml:7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("moe data prepare"), std::string::npos) << msg;
  }
  fs::create_directories(d / "empty");
  dc.source = (d / "empty").string();
  try {
    load_data(dc);
    FAIL() << "no error for a folder without manifest.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json"), std::string::npos) << e.what();
  }
}

// Resume on a prepared folder is bit-exact: 30 steps == 15, stop, resume, 15.
TEST(TrainData, ResumeOnAPreparedFolderIsBitwiseExact) {
  TempDir d("train_data_resume");
  spit(d / "a.txt", make_text(2500, 3));
  PrepareOptions po;
  po.inputs = {(d / "a.txt").string()};
  po.out = (d / "shards").string();
  po.val_fraction = 0.05;
  po.shard_tokens = 5000;  // several shards: windows cross their boundaries
  prepare_dataset(po);
  DataConfig dc;
  dc.source = po.out;
  const TokenData data = load_data(dc);
  ASSERT_TRUE(data.dataset);
  ASSERT_GT(data.dataset->manifest().train.size(), 3u);

  Model ma(tiny_moe());
  ma.init_weights(7);
  const TrainResult ra = train(ma, data, base(d / "a", 30));
  ASSERT_EQ(ra.losses.size(), 30u);

  TrainConfig first = base(d / "b", 30);
  first.stop_after = 15;
  first.eval_tokens = 0;
  Model mb(tiny_moe());
  mb.init_weights(7);
  ASSERT_TRUE(train(mb, data, first).stopped);
  TrainConfig second = base(d / "b", 30);
  second.resume = true;
  Model mc(tiny_moe());
  mc.init_weights(1234);
  const TrainResult rc = train(mc, data, second);
  ASSERT_EQ(rc.losses.size(), 15u);
  for (size_t i = 0; i < 15; ++i) EXPECT_EQ(rc.losses[i], ra.losses[15 + i]) << "step " << 15 + i;
  EXPECT_EQ(mc.params(), ma.params()) << "final weights differ after resume";
  EXPECT_EQ(rc.val_ce, ra.val_ce);

  // Validation is on the held-out split: the same number as evaluating its tokens directly.
  const std::vector<int32_t> val = split_tokens(*data.dataset, Split::kVal);
  EXPECT_EQ(evaluate(ma, val, 32, 4, 512), ra.val_ce);
  const auto metrics = read_metrics(d / "a");
  bool saw_val = false;
  for (const auto& r : metrics)
    if (r["kind"] == "val") {
      saw_val = true;
      EXPECT_NEAR(double(r["ppl"]), std::exp(double(r["loss"])), 1e-9);
    }
  EXPECT_TRUE(saw_val);

  // Resuming against other data is refused: its batches would differ.
  spit(d / "b2.txt", make_text(1000, 4));
  dc.source = (d / "b2.txt").string();
  const TokenData other = load_data(dc);
  TrainConfig third = base(d / "b", 40);
  third.resume = true;
  Model md(tiny_moe());
  try {
    train(md, other, third);
    FAIL() << "resume on other data was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("same [data]"), std::string::npos) << e.what();
  }
}

// Per-layer MoE records: entropy of the router scores (at most ln E), real per-layer drops,
// the bias; `moe report` still renders them.
TEST(TrainData, MoeRecordsPerLayer) {
  TempDir d("train_data_moe");
  spit(d / "a.txt", make_text(1500, 5));
  DataConfig dc;
  dc.source = (d / "a.txt").string();
  const TokenData data = load_data(dc);
  ModelConfig c = tiny_moe();
  c.num_hidden_layers = 3;
  c.capacity_factor = 1.0;
  Model m(c);
  m.init_weights(3);
  TrainConfig tc = base(d / "run", 20);
  train(m, data, tc);
  int records = 0;
  for (const auto& r : read_metrics(d / "run")) {
    if (r["kind"] != "moe") continue;
    ++records;
    EXPECT_TRUE(r["layer"] == 1 || r["layer"] == 2) << r.dump();
    const double h = r["router_entropy"];
    EXPECT_GT(h, 0.0);
    EXPECT_LE(h, std::log(8.0) + 1e-9);
    EXPECT_GE(double(r["max_over_mean"]), 1.0);
    EXPECT_LE(double(r["min_over_mean"]), 1.0);
    // Capacity 1.0: each expert keeps 32 of a step's 256 slots. Summed over the 10 steps of a
    // record, at least sum_e max(0, load_e - 320) slots were dropped (more if a step was more
    // uneven than the sum).
    double excess = 0;
    for (const auto& v : r["load"]) excess += std::max(0.0, double(v) - 320.0);
    const double frac = r["dropped_frac"];
    EXPECT_GT(frac, 0.0) << r.dump();
    EXPECT_GE(frac, excess / 2560.0 - 1e-12) << r.dump();
    // The busiest expert of a step has at least 256/8 = 32 slots and keeps 32 of them.
    EXPECT_LE(frac, 1.0 - 32.0 / 256.0) << r.dump();
    ASSERT_EQ(r["bias"].size(), 8u);
    EXPECT_LE(double(r["bias_min"]), double(r["bias_max"]));
  }
  EXPECT_EQ(records, 2 * 2) << "two MoE layers x two log intervals";
  const std::string page = slurp(write_report((d / "run").string(), ""));
  EXPECT_NE(page.find("layer 2"), std::string::npos);
}

// A BPE run end to end through the program: vocab check, tokenizer.json in the run folder and
// in checkpoints (listed in the manifest), then eval and generate with that tokenizer.
TEST(TrainData, BpeRunCarriesItsTokenizer) {
  TempDir d("train_data_bpe");
  const std::string text = make_text(4000, 6);
  spit(d / "corpus.txt", text);
  BpeTrainOptions bo;
  bo.vocab_size = 300;
  BpeTokenizer::train({text}, bo).save((d / "tok.json").string());
  const fs::path model = d / "model.json";
  spit(model, config_to_json(tiny_moe()));  // vocab 256: too small for the 300-token BPE
  const std::string args = "train --config " + model.string() + " --data " +
                           (d / "corpus.txt").string() + " --tokenizer " +
                           (d / "tok.json").string() + " --out " + (d / "run").string() +
                           " --steps 12 --batch 4 --seq-len 32 --samples 1"
                           " --checkpoint.every 6 --log.progress plain";
  auto [code, out] = run_moe(args);
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("vocab_size = 256"), std::string::npos) << out;
  EXPECT_NE(out.find(model.string()), std::string::npos) << "the message names the file: " << out;
  EXPECT_NE(out.find("300"), std::string::npos) << out;
  EXPECT_NE(out.find("set vocab_size = 300"), std::string::npos) << out;

  spit(model, config_to_json(tiny_moe(300)));
  std::tie(code, out) = run_moe(args);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("bpe (vocab 300"), std::string::npos) << out;
  EXPECT_NE(out.find("held-out: ce "), std::string::npos) << out;
  EXPECT_NE(out.find("| perplexity "), std::string::npos) << out;
  const std::string tok = slurp(d / "tok.json");
  EXPECT_EQ(slurp(d / "run/tokenizer.json"), tok);
  const fs::path ck = d / "run/checkpoints/step_00000012";
  EXPECT_EQ(slurp(ck / "tokenizer.json"), tok);
  EXPECT_NE(slurp(ck / "MANIFEST.json").find("tokenizer.json"), std::string::npos);
  EXPECT_EQ(slurp(d / "run/data/tokenizer.json"), tok) << "the cache keeps its copy too";

  // eval tokenizes with the checkpoint's BPE: fewer tokens than bytes.
  spit(d / "held.txt", make_text(300, 9));
  std::tie(code, out) = run_moe("eval --checkpoint " + (d / "run").string() + " --json --data " +
                                (d / "held.txt").string() + " --seq-len 32");
  ASSERT_EQ(code, 0) << out;
  const json r = json::parse(out);
  EXPECT_EQ(r["tokenizer"], "bpe");
  const int64_t bpe_tokens =
      make_tokenizer((d / "tok.json").string())->encode(slurp(d / "held.txt")).size();
  EXPECT_EQ(int64_t(r["tokens"]), (bpe_tokens - 1) / 32 * 32);
  EXPECT_LT(int64_t(r["tokens"]), int64_t(fs::file_size(d / "held.txt")) / 2);
  // The run's own cache folder is a prepared dataset: eval on its validation split.
  std::tie(code, out) = run_moe("eval --checkpoint " + (d / "run").string() + " --data " +
                                (d / "run/data").string() + " --seq-len 32");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("validation split"), std::string::npos) << out;

  std::tie(code, out) = run_moe("generate --checkpoint " + (d / "run").string() +
                                " --prompt 'the king' --max-new-tokens 20 --seed 1");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.rfind("the king", 0), 0u) << out;
  EXPECT_GT(out.size(), std::string("the king\n").size() + 20)
      << "20 BPE tokens decode to more than 20 bytes: " << out;

  // A byte-level checkpoint refuses a dataset made with the BPE.
  fs::remove(d / "run/tokenizer.json");
  std::tie(code, out) = run_moe("eval --checkpoint " + (d / "run").string() + " --data " +
                                (d / "run/data").string() + " --seq-len 32");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("tokenizer"), std::string::npos) << out;
}

// Real text, when the shared data folder is present.
TEST(TrainData, TinyShakespeareLoads) {
  const char* env = std::getenv("MOE_SHARED_DATA");
  const fs::path path =
      fs::path(env ? env : MOE_SOURCE_DIR "/../shared/data") / "tinyshakespeare.txt";
  if (!fs::exists(path))
    GTEST_SKIP() << "skipped: " << path << " is absent (the shared data folder)";
  TempDir d("train_data_shakespeare");
  DataConfig dc;
  dc.source = path.string();
  const TokenData data = load_data(dc, (d / "cache").string());
  EXPECT_EQ(data.train_tokens() + data.val_tokens(), int64_t(fs::file_size(path)));
  EXPECT_NEAR(double(data.val_tokens()) / double(fs::file_size(path)), 0.1, 0.001);
  std::vector<int32_t> w(2 * 65);
  data.dataset->val_batch(w.data(), 2, 64, 0);
  const std::string head = data.decode(std::vector<int32_t>(w.begin(), w.begin() + 65));
  EXPECT_NE(slurp(path).find(head), std::string::npos) << "val windows are file text: " << head;
}

}  // namespace
}  // namespace moe
