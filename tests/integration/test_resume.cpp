// Issue #4: exact resume, crash safety, checksums, stability guards, metrics.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "data/corpus.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include "run_binary.h"
#include "tiny_model.h"
#include "train/train_state.h"
#include "train/trainer.h"

namespace moe {
namespace {

using moe::testing::run_command;
using moe::testing::tiny_moe;

namespace fs = std::filesystem;

const TokenData& data() {
  static const TokenData d = [] {
    TokenData t;
    t.train = byte_encode(make_builtin_corpus(1, 1 << 16).text);
    t.val = byte_encode(make_builtin_corpus(2, 1 << 12).text);
    return t;
  }();
  return d;
}

TrainConfig base(const fs::path& dir) {
  TrainConfig tc;
  tc.steps = 40;
  tc.batch = 4;
  tc.seq_len = 32;
  tc.warmup = 5;
  tc.log_every = 10;
  tc.eval_tokens = 0;
  tc.progress = "none";
  tc.out_dir = dir.string();
  tc.guard.spike_zscore = 0;  // guards off unless a test turns them on
  return tc;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / (name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  return d;
}

std::vector<nlohmann::json> read_metrics(const fs::path& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream f(dir / "metrics.jsonl");
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

int count_events(const std::vector<nlohmann::json>& m, const std::string& ev) {
  int n = 0;
  for (const auto& r : m) n += r.value("kind", "") == "event" && r.value("event", "") == ev;
  return n;
}

// 40 steps in one go == 20 steps, stop, resume, 20 steps: every loss and every final weight.
TEST(Resume, TwentyPlusTwentyEqualsFortyBitwise) {
  const fs::path a = fresh_dir("resume_a"), b = fresh_dir("resume_b");
  Model ma(tiny_moe());
  ma.init_weights(7);
  const TrainResult ra = train(ma, data(), base(a));
  ASSERT_EQ(ra.losses.size(), 40u);

  TrainConfig first = base(b);
  first.stop_after = 20;
  Model mb(tiny_moe());
  mb.init_weights(7);
  const TrainResult rb1 = train(mb, data(), first);
  ASSERT_TRUE(rb1.stopped);
  ASSERT_EQ(rb1.losses.size(), 20u);

  TrainConfig second = base(b);
  second.resume = true;
  Model mc(tiny_moe());
  mc.init_weights(999);  // different on purpose: everything must come from the checkpoint
  const TrainResult rb2 = train(mc, data(), second);
  ASSERT_EQ(rb2.losses.size(), 20u);

  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(rb1.losses[i], ra.losses[i]) << "step " << i;
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(rb2.losses[i], ra.losses[20 + i]) << "step " << 20 + i;
  ASSERT_EQ(mc.params().size(), ma.params().size());
  size_t differ = 0;
  for (size_t i = 0; i < ma.params().size(); ++i) differ += mc.params()[i] != ma.params()[i];
  EXPECT_EQ(differ, 0u) << "final weights differ after resume";
  EXPECT_EQ(count_events(read_metrics(b), "resume"), 1);
  fs::remove_all(a), fs::remove_all(b);
}

std::string write_model_json(const fs::path& dir) {
  fs::create_directories(dir);
  const fs::path p = dir / "model.json";
  std::ofstream(p) << config_to_json(tiny_moe());
  return p.string();
}

// SIGKILL halfway through the third checkpoint write: the second stays valid, the torn one is
// never used, and --resume continues from the second.
TEST(Resume, KillDuringCheckpointWriteKeepsThePreviousOne) {
  const fs::path d = fresh_dir("resume_kill");
  const std::string model = write_model_json(d / "cfg");
  const std::string args = std::string(MOE_BINARY) + " train --config " + model + " --out " +
                           (d / "run").string() +
                           " --steps 40 --batch 4 --seq-len 32 --samples 0 --checkpoint.every 10"
                           " --log.progress plain --train.eval_tokens 0";
  const auto [code, out] = run_command("MOE_TEST_KILL_IN_CHECKPOINT=3 " + args);
  EXPECT_EQ(code, 128 + 9) << out;  // killed by SIGKILL
  std::vector<std::string> skipped;
  const auto valid = list_train_checkpoints((d / "run").string(), &skipped);
  ASSERT_EQ(valid.size(), 2u) << out;
  EXPECT_NE(valid.front().find("step_00000020"), std::string::npos) << valid.front();

  const auto [code2, out2] = run_command(args + " --resume");
  EXPECT_EQ(code2, 0) << out2;
  EXPECT_NE(out2.find("continuing from"), std::string::npos) << out2;
  EXPECT_NE(out2.find("step_00000020"), std::string::npos) << out2;
  EXPECT_NE(out2.find("step    40/40"), std::string::npos) << out2;
  EXPECT_TRUE(fs::exists(d / "run" / "checkpoints" / "step_00000040"));
  fs::remove_all(d);
}

// A flipped byte is caught by the checksum; resume falls back to the checkpoint before it.
TEST(Resume, FlippedByteIsDetectedAndSkipped) {
  const fs::path d = fresh_dir("resume_flip");
  TrainConfig tc = base(d);
  tc.steps = 30;
  tc.ckpt_every = 10;
  {
    Model m(tiny_moe());
    m.init_weights(3);
    train(m, data(), tc);
  }
  const fs::path newest = d / "checkpoints" / "step_00000030";
  ASSERT_EQ(check_train_checkpoint(newest.string()), "");
  {
    std::fstream f(newest / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-100, std::ios::end);
    char c;
    f.get(c);
    f.seekp(-100, std::ios::end);
    f.put(char(c ^ 0x10));
  }
  const std::string why = check_train_checkpoint(newest.string());
  EXPECT_NE(why.find("model.safetensors"), std::string::npos) << why;
  EXPECT_NE(why.find("checksum"), std::string::npos) << why;
  std::vector<std::string> skipped;
  const auto valid = list_train_checkpoints(d.string(), &skipped);
  ASSERT_FALSE(valid.empty());
  EXPECT_NE(valid.front().find("step_00000020"), std::string::npos);
  ASSERT_EQ(skipped.size(), 1u);

  tc.steps = 35;
  tc.resume = true;
  Model m(tiny_moe());
  const TrainResult r = train(m, data(), tc);
  EXPECT_EQ(r.steps_run, 15);  // from step 20, not 30
  fs::remove_all(d);
}

TEST(Guards, NanAndSpikeAreSkippedAndLogged) {
  const fs::path d = fresh_dir("guard_skip");
  TrainConfig tc = base(d);
  tc.steps = 40;
  tc.guard.spike_zscore = 6;
  tc.guard.spike_min_history = 10;
  tc.fault_inject = "nan@5,spike@30";
  Model m(tiny_moe());
  m.init_weights(1);
  const TrainResult r = train(m, data(), tc);
  EXPECT_EQ(r.skipped, 2);
  EXPECT_EQ(r.rollbacks, 0);
  EXPECT_TRUE(std::isnan(r.losses[5]));
  for (size_t i = 0; i < r.losses.size(); ++i) {
    if (i == 5) continue;
    EXPECT_TRUE(std::isfinite(r.losses[i])) << i;
  }
  for (float p : m.params()) ASSERT_TRUE(std::isfinite(p));  // the NaN never reached the weights
  const auto metrics = read_metrics(d);
  EXPECT_EQ(count_events(metrics, "skip_nonfinite"), 1);
  EXPECT_EQ(count_events(metrics, "skip_spike"), 1);
  fs::remove_all(d);
}

TEST(Guards, RepeatedSpikesRollBackWithALowerLearningRate) {
  const fs::path d = fresh_dir("guard_rollback");
  TrainConfig tc = base(d);
  tc.steps = 40;
  tc.ckpt_every = 10;
  tc.guard.spike_zscore = 6;
  tc.guard.spike_min_history = 10;
  tc.guard.max_spikes = 3;
  tc.fault_inject = "spike@32,spike@33,spike@34";
  Model m(tiny_moe());
  m.init_weights(1);
  const TrainResult r = train(m, data(), tc);
  EXPECT_EQ(r.rollbacks, 1);
  const auto metrics = read_metrics(d);
  EXPECT_EQ(count_events(metrics, "skip_spike"), 2);
  EXPECT_EQ(count_events(metrics, "rollback"), 1);
  // After the rollback to step 30 the lr is halved: the last train record shows it.
  double last_lr = 0;
  int64_t last_step = 0;
  for (const auto& rec : metrics)
    if (rec.value("kind", "") == "train") last_lr = rec["lr"], last_step = rec["step"];
  EXPECT_EQ(last_step, 40);
  EXPECT_NEAR(last_lr, 0.5 * lr_at(tc, 39), 1e-12);
  fs::remove_all(d);
}

}  // namespace
}  // namespace moe
