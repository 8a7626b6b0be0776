// Run config (TOML): every kind of error names the file, line, key and what is allowed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/flops.h"
#include "model/params.h"
#include "train/run_config.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

class RunConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moe_runcfg_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  // Expects an error whose message holds every needle.
  void expect_error(const std::string& toml, std::vector<std::string> needles,
                    const std::vector<Override>& over = {}) {
    const std::string path = write("run.toml", toml);
    try {
      load_run_config(path, over);
      ADD_FAILURE() << "no error for:\n" << toml;
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << n << " not in: " << msg;
    }
  }
  fs::path dir_;
};

TEST_F(RunConfigTest, ReadsEverySectionAndOverrides) {
  const std::string path = write("run.toml", R"(
[model]
hidden_size = 64
num_attention_heads = 4
head_dim = 16
max_position_embeddings = 64
[data]
source = "builtin"
[train]
steps = 123
seq_len = 64
[optim]
lr = 1e-3
schedule = "wsd"
[checkpoint]
every = 50
[guard]
spike_zscore = 5.5
[log]
progress = "plain"
)");
  const RunConfig rc = load_run_config(path, {{"train.steps", "77"}, {"optim.lr", "2e-3"},
                                              {"model.num_hidden_layers", "3"}});
  EXPECT_EQ(rc.model.hidden_size, 64);
  EXPECT_EQ(rc.model.num_hidden_layers, 3);
  EXPECT_EQ(rc.train.steps, 77);
  EXPECT_DOUBLE_EQ(rc.train.lr, 2e-3);
  EXPECT_EQ(rc.train.schedule, "wsd");
  EXPECT_EQ(rc.train.ckpt_every, 50);
  EXPECT_DOUBLE_EQ(rc.train.guard.spike_zscore, 5.5);
  EXPECT_EQ(rc.train.progress, "plain");
  // The resolved config written to a run folder reads back the same.
  const std::string again = write("again.toml", run_config_to_toml(rc));
  const RunConfig rc2 = load_run_config(again);
  EXPECT_EQ(config_to_json(rc2.model), config_to_json(rc.model));
  EXPECT_EQ(rc2.train.steps, 77);
  EXPECT_EQ(rc2.train.schedule, "wsd");
}

TEST_F(RunConfigTest, ModelFromAConfigJsonNextToTheToml) {
  ModelConfig m;
  m.hidden_size = 96;
  m.num_attention_heads = 3;
  m.num_key_value_heads = 1;
  m.head_dim = 32;
  std::ofstream(dir_ / "config.json") << config_to_json(m);
  const RunConfig rc = load_run_config(write("run.toml", "[model]\nconfig = \"config.json\"\n"));
  EXPECT_EQ(rc.model.hidden_size, 96);
  expect_error("[model]\nconfig = \"missing.json\"\n", {"missing.json"});
}

TEST_F(RunConfigTest, UnknownKeyNamesFileLineAndNearestKey) {
  expect_error("[train]\nsteps = 10\nstpes = 20\n", {"run.toml:3", "stpes", "did you mean steps"});
}

TEST_F(RunConfigTest, UnknownModelKeyNamesLine) {
  expect_error("[model]\nhidden_size = 64\nhiden_size = 64\n", {"run.toml:3", "hiden_size"});
}

TEST_F(RunConfigTest, UnknownSection) {
  expect_error("[trian]\nsteps = 1\n", {"run.toml:1", "trian", "sections are"});
}

TEST_F(RunConfigTest, WrongTypeNamesKeyAndAllowed) {
  expect_error("[train]\nsteps = \"many\"\n", {"run.toml:2", "steps", "an integer"});
  expect_error("[checkpoint]\nresume = 1\n", {"run.toml:2", "resume", "true or false"});
}

TEST_F(RunConfigTest, OutOfRangeNamesTheRange) {
  expect_error("[train]\nbatch = 0\n", {"run.toml:2", "batch", "[1,"});
  expect_error("[optim]\nbeta2 = 1.5\n", {"run.toml:2", "beta2"});
}

TEST_F(RunConfigTest, BadChoiceListsTheChoices) {
  expect_error("[optim]\nschedule = \"linear\"\n", {"run.toml:2", "schedule", "cosine|wsd|constant"});
}

TEST_F(RunConfigTest, InvalidTomlNamesTheLine) {
  expect_error("[train]\nsteps = = 3\n", {"run.toml:2"});
}

TEST_F(RunConfigTest, CrossChecks) {
  expect_error("[train]\nseq_len = 4096\n", {"seq_len", "max_position_embeddings"});
  expect_error("[model]\nn_routed_experts = 4\nnum_experts_per_tok = 6\n", {"num_experts_per_tok"});
}

TEST_F(RunConfigTest, CommandLineOverridesAreCheckedToo) {
  expect_error("", {"command line --train.stpes", "did you mean steps"}, {{"train.stpes", "3"}});
  expect_error("", {"--optim.lr", "a number"}, {{"optim.lr", "fast"}});
  EXPECT_THROW(parse_overrides({"--train.steps"}), Error);
  EXPECT_THROW(parse_overrides({"steps", "3"}), Error);
  const auto o = parse_overrides({"--train.steps", "3", "--optim.lr=1e-4"});
  ASSERT_EQ(o.size(), 2u);
  EXPECT_EQ(o[1].first, "optim.lr");
  EXPECT_EQ(o[1].second, "1e-4");
}

// Parameter counts and FLOPs against hand-computed values for a small model.
// The vocab check names [model] vocab_size with the file and line it came from, both sizes
// and the fix; [data] keys keep their places for data errors.
TEST_F(RunConfigTest, VocabCheckNamesKeyFileLineAndFix) {
  const std::string path = write("run.toml", "[model]\nhidden_size = 64\nnum_attention_heads = 4\n"
                                             "head_dim = 16\nvocab_size = 256\n[data]\n"
                                             "source = \"corpus.txt\"\n");
  const RunConfig rc = load_run_config(path);
  EXPECT_EQ(rc.where_of("model.vocab_size"), path + ":5");
  EXPECT_EQ(rc.data.where.at("source"), path + ":7");
  EXPECT_EQ(rc.where_of("train.steps"), "") << "defaults have no place";
  EXPECT_EQ(rc.data.tokenizer, "") << "auto: byte for text, the folder's own for prepared data";
  TokenData bpe;
  bpe.vocab_size = 4096;
  bpe.tokenizer_spec = "/x/tokenizer.json";
  try {
    check_vocab(rc.model, bpe, rc.where_of("model.vocab_size"));
    ADD_FAILURE() << "a 256-row embedding accepted a 4096-token tokenizer";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* n : {"[model] vocab_size = 256", "run.toml:5", "4096", "/x/tokenizer.json",
                          "set vocab_size = 4096", "--model.vocab_size 4096"})
      EXPECT_NE(msg.find(n), std::string::npos) << n << " not in: " << msg;
  }
  bpe.vocab_size = 256;
  EXPECT_NO_THROW(check_vocab(rc.model, bpe, ""));
  const RunConfig over = load_run_config(path, {{"model.vocab_size", "512"}});
  EXPECT_EQ(over.where_of("model.vocab_size"), "command line --model.vocab_size");
}

TEST(Flops, HandComputedSmallModel) {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 4;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 2;
  c.intermediate_size = 6;
  c.moe_intermediate_size = 3;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.tie_word_embeddings = false;
  // attention: qkv (2+2*1)*2 = 8 rows x 4 = 32, o 4x4 = 16, norm 4 -> 52 per layer
  // dense FFN: 3*4*6 = 72 + norm 4 = 76; expert 3*4*3 = 36; router 4*4 = 16; shared 36; norm 4
  // total = embed 40 + lm_head 40 + final norm 4 + 2*52 + 76 + (16 + 36 + 4 + 4*36) = 464
  const ParamCounts p = count_params(c);
  EXPECT_EQ(p.total, 464);
  EXPECT_EQ(p.routed_experts, 144);
  // active: total - embedding lookup 40 - 2 unused experts 72 = 352
  EXPECT_EQ(p.active, 352);
  // The parameter arena holds the same plus the untrained balancing bias (E = 4).
  EXPECT_EQ(make_layout(c).total_numel, 464 + 4);
  // matmul per token: lm_head 40 + 2*(32+16) + 72 + (16 + 3*36) = 332; 6*332 = 1992
  // attention: 12 * L 2 * H 2 * Dh 2 * T 8 = 768
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, 8), 1992.0 + 768.0);
}

}  // namespace
}  // namespace moe
