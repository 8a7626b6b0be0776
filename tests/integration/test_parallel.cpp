// Distributed training against one process (DESIGN.md section 4): every dp x ep layout of the
// real `moe train`, started by the real `moe launch` (or mpirun, or srun) as separate
// processes talking over shared memory, must train the model one process trains on the same
// global batches: the same per-step losses (metrics.jsonl) and the same final weights
// (model.safetensors) within 1e-5. Models: tests/configs/dist_{deepseek,mixtral}.toml.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "launchers.h"
#include "run_binary.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using moe::testing::run_command;
using nlohmann::json;

std::string config_path(const std::string& model) {
  return std::string(MOE_SOURCE_DIR) + "/tests/configs/dist_" + model + ".toml";
}

struct TempDir : moe::testing::DistTempDir {
  explicit TempDir(const std::string& name) : DistTempDir("parallel", name) {}
};

const char* const kEnv = moe::testing::kDistEnv;

// `moe train` of `model` into `dir` on dp x ep ranks started by moe launch (one process, no
// launcher, when both are 1).
std::pair<int, std::string> train(const std::string& model, const std::string& dir, int dp, int ep,
                                  const std::string& extra = "",
                                  const std::string& launch_flags = "") {
  const int n = dp * ep;
  std::string cmd = kEnv;
  if (n > 1 || !launch_flags.empty())
    cmd += std::string(MOE_BINARY) + " launch --nproc-per-node " + std::to_string(n) + " " +
           launch_flags + " -- ";
  cmd += std::string(MOE_BINARY) + " train --config " + config_path(model) + " --checkpoint.dir " +
         dir + " --parallel.dp " + std::to_string(dp) + " --parallel.ep " + std::to_string(ep) +
         " --samples 0 " + extra;
  return run_command(cmd);
}

// Per-step loss from metrics.jsonl (log.every = 1), by step; a step logged twice (after a
// resume) keeps its last value.
std::map<int64_t, double> losses(const std::string& dir) {
  std::ifstream f(dir + "/metrics.jsonl");
  std::map<int64_t, double> out;
  for (std::string line; std::getline(f, line);) {
    const json r = json::parse(line);
    if (r.value("kind", "") == "train") out[r.at("step").get<int64_t>()] = r.at("loss");
  }
  return out;
}

std::vector<json> records(const std::string& dir, const std::string& kind) {
  std::ifstream f(dir + "/metrics.jsonl");
  std::vector<json> out;
  for (std::string line; std::getline(f, line);) {
    json r = json::parse(line);
    if (r.value("kind", "") == kind) out.push_back(std::move(r));
  }
  return out;
}

// Largest relative difference of the per-step losses; both must have `steps` steps.
double loss_gap(const std::string& a, const std::string& b, int64_t steps) {
  const auto la = losses(a), lb = losses(b);
  EXPECT_EQ(int64_t(la.size()), steps) << a;
  EXPECT_EQ(int64_t(lb.size()), steps) << b;
  double worst = 0;
  for (const auto& [step, x] : la) {
    const auto it = lb.find(step);
    if (it == lb.end()) return INFINITY;
    worst = std::max(worst, std::abs(x - it->second) / std::max(1e-12, std::abs(x)));
  }
  return worst;
}

// Largest |a - b| / max(1, |a|) over every tensor of two model.safetensors, which must hold
// the same tensor names and shapes.
double weight_gap(const std::string& fa, const std::string& fb) {
  const SafetensorsFile a = read_safetensors(fa), b = read_safetensors(fb);
  EXPECT_EQ(a.tensors.size(), b.tensors.size());
  double worst = 0;
  for (const auto& [name, ta] : a.tensors) {
    if (!b.has(name)) {
      ADD_FAILURE() << name << " missing in " << fb;
      return INFINITY;
    }
    const std::vector<float> x = ta.as_f32(name), y = b.at(name).as_f32(name);
    EXPECT_EQ(x.size(), y.size()) << name;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      worst =
          std::max(worst, double(std::abs(x[i] - y[i])) / std::max(1.0, double(std::abs(x[i]))));
  }
  return worst;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The one-process run of each model (with extra flags), trained once per test binary.
const std::string& reference(const std::string& model, const std::string& extra = "") {
  static std::map<std::string, std::string> dirs;
  static TempDir root("reference");
  auto it = dirs.find(model + extra);
  if (it != dirs.end()) return it->second;
  const std::string dir = root / (model + std::to_string(dirs.size()));
  const auto [code, out] = train(model, dir, 1, 1, extra);
  EXPECT_EQ(code, 0) << out;
  return dirs[model + extra] = dir;
}

struct Layout {
  std::string model;
  int dp, ep;
  std::string extra = "";  // more flags for this run and its one-process reference
};
void PrintTo(const Layout& l, std::ostream* os) {
  *os << l.model << " dp " << l.dp << " x ep " << l.ep << " " << l.extra;
}

const char* const kSmallBuckets = "--parallel.bucket_mb 0.015625";

class ParallelLayouts : public ::testing::TestWithParam<Layout> {};

// Item 1: 20 steps at the same global batch (8 sequences) give the one-process losses and final
// weights. Not bitwise: every rank's gradients are means over its own tokens, summed over the
// ranks in the reduce-scatter's order and then scaled by 1/ranks, which rounds differently
// from one mean over all tokens (measured gaps are ~1e-8).
TEST_P(ParallelLayouts, TrainTheModelOfOneProcess) {
  const Layout l = GetParam();
  const std::string& ref = reference(l.model, l.extra);
  TempDir d(l.model + std::to_string(l.dp) + "x" + std::to_string(l.ep));
  const auto [code, out] = train(l.model, d / "run", l.dp, l.ep, l.extra);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("parallel: " + std::to_string(l.dp * l.ep) + " ranks: dp " +
                     std::to_string(l.dp) + " x ep " + std::to_string(l.ep)),
            std::string::npos)
      << out;
  EXPECT_LE(loss_gap(ref, d / "run", 20), 1e-5);
  EXPECT_LE(weight_gap(ref + "/model.safetensors", d / "run/model.safetensors"), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Dist, ParallelLayouts,
    ::testing::Values(Layout{"deepseek", 2, 1}, Layout{"deepseek", 4, 1}, Layout{"deepseek", 1, 2},
                      Layout{"deepseek", 1, 4}, Layout{"deepseek", 2, 2}, Layout{"mixtral", 2, 1},
                      Layout{"mixtral", 4, 1}, Layout{"mixtral", 1, 2}, Layout{"mixtral", 1, 4},
                      Layout{"mixtral", 2, 2},
                      // Capacity counts each expert's slots in the global token order (rank
                      // 0's tokens first), so the same slots are dropped as on one process.
                      Layout{"mixtral", 2, 2, "--model.capacity_factor 1.0"},
                      // MLA + 2 MTP modules: the MTP blocks' experts shard over ep; with
                      // 16 KiB buckets, each MTP module's gradients are reduced as soon as its
                      // backward ends (and not before).
                      Layout{"mla", 2, 1, kSmallBuckets}, Layout{"mla", 1, 2, kSmallBuckets},
                      Layout{"mla", 2, 2, kSmallBuckets}),
    [](const ::testing::TestParamInfo<Layout>& i) {
      return i.param.model + "_dp" + std::to_string(i.param.dp) + "_ep" +
             std::to_string(i.param.ep) +
             (i.param.extra.empty() || i.param.extra == kSmallBuckets ? "" : "_capacity");
    });

// Item 2: the same layout twice gives the same bits (losses and every weight).
TEST(ParallelTrain, SameLayoutTwiceIsBitwiseTheSame) {
  TempDir d("determinism");
  for (const char* run : {"a", "b"}) {
    const auto [code, out] = train("deepseek", d / run, 2, 2);
    ASSERT_EQ(code, 0) << out;
  }
  EXPECT_EQ(losses(d / "a"), losses(d / "b"));
  const std::string wa = read_bytes(d / "a/model.safetensors");
  EXPECT_GT(wa.size(), 100000u);
  EXPECT_TRUE(wa == read_bytes(d / "b/model.safetensors"));
}

// Item 3: ZeRO-1 keeps about 1/dp of one process's AdamW moments on each rank (the run record
// lists every rank's bytes); together they still cover the whole model.
TEST(ParallelTrain, Zero1KeepsAQuarterOfTheMomentsOnEachOfFourRanks) {
  TempDir d("zero1");
  const auto [code, out] = train("deepseek", d / "run", 4, 1, "--train.steps 2");
  ASSERT_EQ(code, 0) << out;
  const std::vector<json> run = records(d / "run", "run");
  ASSERT_EQ(run.size(), 1u);
  const int64_t one = run[0].at("optimizer_bytes_one_process");
  const std::vector<int64_t> per_rank = run[0].at("optimizer_bytes");
  ASSERT_EQ(per_rank.size(), 4u);
  int64_t sum = 0;
  for (int64_t b : per_rank) {
    // Padding each region to 16 floats per rank adds at most 2 x 64 floats x 8 bytes.
    EXPECT_LE(b, one / 4 + 2 * 64 * 8) << "one process " << one;
    EXPECT_GE(b, one / 4) << "one process " << one;
    sum += b;
  }
  EXPECT_GE(sum, one);
}

// Item 4: 10 steps on 4 ranks (dp 2 x ep 2), then 10 more on 2 ranks (ep 2) or on one process,
// from the checkpoint the 4 ranks wrote: the losses of a 20-step one-process run.
TEST(ParallelTrain, CheckpointOfFourRanksResumesOnTwoAndOnOne) {
  const std::string& ref = reference("deepseek");
  TempDir d("reshard");
  const auto [code, out] = train("deepseek", d / "four", 2, 2, "--checkpoint.stop_after 10");
  ASSERT_EQ(code, 0) << out;
  ASSERT_EQ(losses(d / "four").size(), 10u);
  fs::copy(d / "four", d / "two", fs::copy_options::recursive);
  fs::copy(d / "four", d / "one", fs::copy_options::recursive);
  const auto [c2, o2] = train("deepseek", d / "two", 1, 2, "--checkpoint.resume true");
  ASSERT_EQ(c2, 0) << o2;
  EXPECT_NE(o2.find("resume: continuing from"), std::string::npos) << o2;
  EXPECT_LE(loss_gap(ref, d / "two", 20), 1e-5);
  const auto [c1, o1] = train("deepseek", d / "one", 1, 1, "--checkpoint.resume true");
  ASSERT_EQ(c1, 0) << o1;
  EXPECT_LE(loss_gap(ref, d / "one", 20), 1e-5);
  EXPECT_LE(weight_gap(ref + "/model.safetensors", d / "one/model.safetensors"), 1e-5);
}

// Item 7: a checkpoint written by 4 expert-parallel ranks holds every expert of every MoE layer
// under its Hugging Face name, and one process loads it bitwise (resuming at its last step
// trains nothing and writes the same weights back).
TEST(ParallelTrain, Ep4CheckpointHoldsEveryExpertAndLoadsOnOneProcessBitwise) {
  TempDir d("ep4");
  const auto [code, out] = train("deepseek", d / "run", 1, 4, "--train.steps 3");
  ASSERT_EQ(code, 0) << out;
  const std::string ckpt = d / "run/checkpoints/step_00000003";
  const SafetensorsFile f = read_safetensors(ckpt + "/model.safetensors");
  int experts = 0;
  for (int layer = 1; layer < 3; ++layer)  // layer 0 is dense
    for (int e = 0; e < 8; ++e)
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        experts += f.has("model.layers." + std::to_string(layer) + ".mlp.experts." +
                         std::to_string(e) + "." + p + ".weight");
  EXPECT_EQ(experts, 2 * 8 * 3);
  const std::string before = read_bytes(ckpt + "/model.safetensors");
  fs::copy(ckpt, d / "saved", fs::copy_options::recursive);
  const auto [c1, o1] =
      train("deepseek", d / "run", 1, 1, "--train.steps 3 --checkpoint.resume true");
  ASSERT_EQ(c1, 0) << o1;
  EXPECT_TRUE(read_bytes(d / "run/model.safetensors").size() > 1000);
  EXPECT_EQ(weight_gap(d / "saved/model.safetensors", d / "run/model.safetensors"), 0.0);
  EXPECT_TRUE(before == read_bytes(ckpt + "/model.safetensors"));
}

// Item 7: the dispatcher's edge cases, on 2 and 4 ranks (tests/parallel/dispatch_worker.cpp):
// rows filled with the sender's rank id arrive at the right experts and come home unchanged,
// some rank pairs exchanging no row; and a routing that leaves every expert of ranks 1.. without
// a token trains as one process does.
TEST(ParallelDispatch, RankIdRowsGoAndComeBackAndIdleExpertsWork) {
  for (int ranks : {2, 4}) {
    const auto [code, out] =
        run_command(std::string(kEnv) + MOE_BINARY + " launch --nproc-per-node " +
                    std::to_string(ranks) + " -- " + MOE_DISPATCH_WORKER);
    EXPECT_EQ(code, 0) << out;
    for (int r = 0; r < ranks; ++r)
      EXPECT_NE(out.find("dispatch_worker rank " + std::to_string(r) + ": ok"), std::string::npos)
          << out;
  }
}

// Node-limited routing over two fake hosts of two ranks (MOE_HOST_ID): n_group = 2 hosts,
// topk_group = 1, every token's top-3 experts on one host (dispatch_worker's node_limited).
TEST(ParallelDispatch, NodeLimitedTokensReachOneHost) {
  const auto [code, out] =
      run_command(std::string(kEnv) + MOE_BINARY + " launch --nproc-per-node 4 -- /bin/sh -c "
                  "'MOE_HOST_ID=h$((MOE_RANK / 2)) exec " MOE_DISPATCH_WORKER "'");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("node_limited: tokens per host"), std::string::npos) << out;
  for (int r = 0; r < 4; ++r)
    EXPECT_NE(out.find("dispatch_worker rank " + std::to_string(r) + ": ok"), std::string::npos)
        << out;
}

// Across hosts: two `moe launch --nnodes 2` on this machine, each told it is another host
// (MOE_HOST_ID), so ranks of different "hosts" talk over TCP: the same bits as one node of 4
// ranks over shared memory (the same sums in the same order, only the wire differs).
TEST(ParallelTrain, TwoNodesOverTcpTrainLikeOneNode) {
  TempDir d("nodes");
  const auto [c0, o0] = train("deepseek", d / "one", 2, 2);
  ASSERT_EQ(c0, 0) << o0;
  const std::string node =
      std::string("MOE_JOB_TOKEN=0123456789abcdef0123456789abcdef ") + kEnv + MOE_BINARY +
      " launch --nnodes 2 --master-addr 127.0.0.1 --master-port " +
      std::to_string(moe::testing::free_port()) + " --nproc-per-node 2 --node-rank ";
  const std::string train_args = std::string(" -- ") + MOE_BINARY + " train --config " +
                                 config_path("deepseek") + " --checkpoint.dir " + (d / "two") +
                                 " --parallel.ep 2 --samples 0";
  const auto [code, out] = run_command(
      "(export MOE_HOST_ID=hostA; " + node + "0" + train_args + " > " + (d / "node0.log") +
      " 2>&1 & a=$!; export MOE_HOST_ID=hostB; " + node + "1" + train_args + "; b=$?; wait $a; " +
      "ra=$?; cat " + (d / "node0.log") + "; exit $((ra | b)))");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("tcp to 2 ranks"), std::string::npos) << out;
  EXPECT_EQ(losses(d / "one"), losses(d / "two"));
  EXPECT_TRUE(read_bytes(d / "one/model.safetensors") == read_bytes(d / "two/model.safetensors"));
}

// Item 5: rank 1 of a 2-rank job dies by SIGKILL at step 12 (of 20, a checkpoint every 5);
// `moe launch --max-restarts 1` stops the other rank, starts the job again, and the trainer
// resumes from step 10: two steps lost, the same losses as a job nobody disturbed.
TEST(ParallelTrain, KilledRankCostsAtMostOneCheckpointInterval) {
  const std::string& ref = reference("deepseek");
  TempDir d("elastic");
  const auto [code, out] =
      train("deepseek", d / "run", 1, 2, "--checkpoint.every 5 --log.fault_inject kill@12:r1",
            "--max-restarts 1");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("restarting the job (restart 1 of 1)"), std::string::npos) << out;
  EXPECT_NE(out.find("resume: continuing from"), std::string::npos) << out;
  std::vector<int64_t> resumed_at;
  bool restart_event = false;
  for (const json& e : records(d / "run", "event")) {
    restart_event |= e.value("event", "") == "elastic_restart";
    if (e.value("event", "") == "resume") resumed_at.push_back(e.at("step").get<int64_t>());
  }
  EXPECT_TRUE(restart_event);
  ASSERT_EQ(resumed_at.size(), 1u);
  EXPECT_GE(resumed_at[0], 12 - 5);  // at most one checkpoint interval of steps is redone
  EXPECT_LE(loss_gap(ref, d / "run", 20), 1e-5);
  EXPECT_LE(weight_gap(ref + "/model.safetensors", d / "run/model.safetensors"), 1e-5);
}

// Item 8: layouts that do not fit, a rank started with another config, and a run folder holding
// another model's checkpoint each stop the job with one clear error.
TEST(ParallelTrain, BadLayoutsStopWithOneClearError) {
  TempDir d("bad");
  struct Case {
    int ranks;
    std::string flags, expect;
  };
  const std::vector<Case> cases = {
      {3, "--parallel.ep 2", "the job has 3 ranks, not divisible by [parallel] ep = 2"},
      {3, "--parallel.ep 3", "n_routed_experts = 8 is not divisible by [parallel] ep = 3"},
      {2, "--parallel.dp 4", "[parallel] dp = 4 x ep = 1 is 4 ranks but the job has 2"},
      {3, "--parallel.ep 1",
       "[train] batch = 8 sequences per micro-batch cannot be split evenly"
       " over 3 ranks"},
  };
  for (const Case& c : cases) {
    const auto [code, out] = run_command(
        std::string(kEnv) + MOE_BINARY + " launch --nproc-per-node " + std::to_string(c.ranks) +
        " -- " + MOE_BINARY + " train --config " + config_path("deepseek") + " --checkpoint.dir " +
        (d / "run") + " --samples 0 " + c.flags);
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.flags << "\n" << out;
  }
}

TEST(ParallelTrain, RankWithAnotherConfigIsNamed) {
  TempDir d("mixed");
  // Rank 1 gets another seed: the config hash differs and every rank says which.
  const auto [code, out] =
      run_command(std::string(kEnv) + MOE_BINARY + " launch --nproc-per-node 2 -- sh -c '" +
                  MOE_BINARY + " train --config " + config_path("deepseek") + " --checkpoint.dir " +
                  (d / "run") + " --samples 0 --train.seed $((7 + MOE_RANK))'");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("rank 1 runs config "), std::string::npos) << out;
  EXPECT_NE(out.find(", rank 0 runs "), std::string::npos) << out;
}

TEST(ParallelTrain, CheckpointOfAnotherModelIsRefused) {
  TempDir d("other");
  const auto [c0, o0] = train("mixtral", d / "run", 1, 1, "--train.steps 2");
  ASSERT_EQ(c0, 0) << o0;
  const auto [code, out] = train("deepseek", d / "run", 2, 1, "--checkpoint.resume true");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("its config.json differs from the run's model config"), std::string::npos)
      << out;
}

// Item 6: the same job under Open MPI's mpirun and Slurm's srun (5 steps, 2 ranks, dp 1 x ep 2)
// gives the losses it gives under moe launch.
std::string launcher_args(const std::string& dir) {
  return "train --config " + config_path("deepseek") + " --checkpoint.dir " + dir +
         " --parallel.ep 2 --train.steps 5 --samples 0";
}

// (launcher name, "" when it can run here or why not, run `moe ARGS` on N ranks under it)
struct Launcher {
  std::string name;
  std::string (*why_not)();
  std::pair<int, std::string> (*run)(int, const std::string&);
};
void PrintTo(const Launcher& l, std::ostream* os) { *os << l.name; }

class ParallelLaunchers : public ::testing::TestWithParam<Launcher> {};

TEST_P(ParallelLaunchers, TrainLikeMoeLaunch) {
  const Launcher l = GetParam();
  if (const std::string why = l.why_not(); !why.empty()) GTEST_SKIP() << why;
  TempDir d(l.name);
  const auto [c0, o0] = train("deepseek", d / "launch", 1, 2, "--train.steps 5");
  ASSERT_EQ(c0, 0) << o0;
  setenv("OMP_NUM_THREADS", "1", 1);
  const auto [code, out] = l.run(2, launcher_args(d / l.name));
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("parallel: 2 ranks: dp 1 x ep 2"), std::string::npos) << out;
  EXPECT_EQ(losses(d / "launch"), losses(d / l.name));
  EXPECT_EQ(losses(d / l.name).size(), 5u);
}

INSTANTIATE_TEST_SUITE_P(
    Under, ParallelLaunchers,
    ::testing::Values(Launcher{"mpirun", moe::testing::why_no_openmpi, moe::testing::mpirun_moe},
                      Launcher{"srun", moe::testing::why_no_slurm, moe::testing::srun_moe}),
    [](const ::testing::TestParamInfo<Launcher>& i) { return i.param.name; });

}  // namespace
}  // namespace moe
