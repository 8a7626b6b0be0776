// DiLoCo ([parallel] mode = "diloco", src/parallel/diloco.h) with real ranks: `moe train` under
// `moe launch`, 4 processes over shared memory, on tests/configs/dist_diloco.toml (two groups of
// an expert-parallel pair, outer sync every 2 steps) or dist_deepseek.toml.
//   - one group with outer lr 1 and no momentum trains like sync training of the same layout;
//   - every outer step of a 2-group run, recorded by the MOE_TEST_DILOCO_DUMP hook, matches the
//     Nesterov step computed here from the groups' parameters; the groups hold the same bits
//     after it; group 0's inner steps are a 2-rank sync run's on its half of the batch;
//   - the outer step on known vectors matches torch.optim.SGD(nesterov=True);
//   - INT8 pseudo-gradients: the same step up to their rounding, a quarter of the bytes;
//   - stop and resume, and a rank killed mid-run, give the bits of an undisturbed run;
//   - layouts and schedules that do not fit stop with one clear error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "parallel/diloco.h"
#include "launchers.h"
#include "run_binary.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using moe::testing::run_command;
using nlohmann::json;

std::string config_path(const std::string& name) {
  return std::string(MOE_SOURCE_DIR) + "/tests/configs/" + name + ".toml";
}

struct TempDir : moe::testing::DistTempDir {
  explicit TempDir(const std::string& name) : DistTempDir("diloco", name) {}
};

const char* const kEnv = moe::testing::kDistEnv;

// `moe train --config CONFIG` into dir on `ranks` ranks started by moe launch.
std::pair<int, std::string> train(const std::string& config, const std::string& dir, int ranks,
                                  const std::string& extra = "", const std::string& env = "",
                                  const std::string& launch_flags = "") {
  return run_command(env + " " + kEnv + MOE_BINARY + " launch --nproc-per-node " +
                     std::to_string(ranks) + " " + launch_flags + " -- " + MOE_BINARY +
                     " train --config " + config_path(config) + " --checkpoint.dir " + dir +
                     " --samples 0 " + extra);
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

// Per-step loss (log.every = 1); a step logged twice (after a resume) keeps its last value.
std::map<int64_t, double> losses(const std::string& dir) {
  std::map<int64_t, double> out;
  for (const json& r : records(dir, "train")) out[r.at("step").get<int64_t>()] = r.at("loss");
  return out;
}

// Which values of the full layout are balancing biases (e_score_correction_bias): the outer
// step averages them over the groups instead of stepping them with momentum.
std::vector<bool> balancing_biases(const std::string& run_dir) {
  ModelConfig cfg;
  std::vector<float> params;
  load_checkpoint(run_dir, &cfg, &params);
  std::vector<bool> mask(params.size(), false);
  for (const ParamSpec& s : make_layout(cfg).specs)
    if (s.name.find("e_score_correction_bias") != std::string::npos)
      for (int64_t i = 0; i < s.numel; ++i) mask[size_t(s.offset + i)] = true;
  return mask;
}

std::vector<float> final_params(const std::string& dir) {
  ModelConfig cfg;
  std::vector<float> p;
  load_checkpoint(dir, &cfg, &p);
  return p;
}

std::vector<float> tensor(const SafetensorsFile& f, const std::string& name) {
  return f.at(name).as_f32(name);
}

double max_rel_gap(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = a.size() == b.size() ? 0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst,
                     std::abs(double(a[i]) - double(b[i])) / std::max(1.0, std::abs(double(a[i]))));
  return worst;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Item 1a: one group of all 4 ranks (dp 2 x ep 2) with outer lr 1 and momentum 0 sets the
// parameters to theta_global - (theta_global - theta_local) = theta_local after every step:
// the sync run's losses and weights, up to the rounding of that difference (measured ~1e-8).
TEST(DiLoCo, OneGroupWithOuterLrOneTrainsLikeSync) {
  TempDir d("onegroup");
  const std::string layout = "--parallel.ep 2 --train.steps 12 ";
  const auto [c0, o0] = train("dist_deepseek", d / "sync", 4, layout);
  ASSERT_EQ(c0, 0) << o0;
  const auto [c1, o1] = train("dist_deepseek", d / "diloco", 4,
                              layout +
                                  "--parallel.mode diloco --parallel.diloco_group 4 "
                                  "--parallel.inner_steps 1 --parallel.outer_lr 1 "
                                  "--parallel.outer_momentum 0");
  ASSERT_EQ(c1, 0) << o1;
  EXPECT_NE(o1.find("DiLoCo, 1 group of 4 ranks (outer sync every 1 steps), each dp 2 x ep 2"),
            std::string::npos)
      << o1;
  const auto ls = losses(d / "sync"), ld = losses(d / "diloco");
  ASSERT_EQ(ls.size(), 12u);
  ASSERT_EQ(ld.size(), 12u);
  for (const auto& [step, x] : ls)
    EXPECT_NEAR(ld.at(step), x, 1e-6 * std::abs(x)) << "step " << step;
  EXPECT_LE(max_rel_gap(final_params(d / "sync"), final_params(d / "diloco")), 1e-6);
  EXPECT_EQ(records(d / "diloco", "diloco_sync").size(), 12u);
}

// Item 1b: two groups of an ep-2 pair, 6 steps, outer sync every 2 (lr 0.7, momentum 0.9). The
// hook writes, at each sync and for each group, the group's parameters before it ("local"),
// theta_global and the momentum before and after it (full layout). Checked here:
//   - the groups trained on different data (their local parameters differ), and agree bitwise
//     on theta_global and the momentum before and after every sync;
//   - each sync continues from the last: before(S) == after(S - 2), the momentum starts at 0;
//   - after = the Nesterov step on the mean of the two pseudo-gradients, computed here;
//   - the final model is the last theta_global;
//   - group 0's parameters at the first sync are those of a 2-rank sync run with batch 4 (its
//     half of each global batch of 8), bitwise: inside a group, training is sync training.
TEST(DiLoCo, OuterStepsMatchTheHandComputation) {
  TempDir d("outer");
  const auto [code, out] =
      train("dist_diloco", d / "run", 4, "--train.steps 6", "MOE_TEST_DILOCO_DUMP=" + (d / "dump"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("parallel: 4 ranks: DiLoCo, 2 groups of 2 ranks (outer sync every 2 "
                     "steps), each dp 1 x ep 2"),
            std::string::npos)
      << out;
  const float lr = 0.7f, mu = 0.9f;
  const std::vector<bool> averaged = balancing_biases(d / "run");
  ASSERT_GT(std::count(averaged.begin(), averaged.end(), true), 0);
  std::vector<float> prev_theta, prev_m;
  for (int step : {2, 4, 6}) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08d_group", step);
    const SafetensorsFile g0 = read_safetensors(d / "dump/" + name + "0.safetensors");
    const SafetensorsFile g1 = read_safetensors(d / "dump/" + name + "1.safetensors");
    for (const char* t : {"theta_before", "momentum_before", "theta_after", "momentum_after"})
      EXPECT_TRUE(tensor(g0, t) == tensor(g1, t)) << t << " differs between groups, step " << step;
    const std::vector<float> l0 = tensor(g0, "local"), l1 = tensor(g1, "local");
    const std::vector<float> tb = tensor(g0, "theta_before"), mb = tensor(g0, "momentum_before");
    const std::vector<float> ta = tensor(g0, "theta_after"), ma = tensor(g0, "momentum_after");
    ASSERT_EQ(l0.size(), tb.size());
    EXPECT_GT(max_rel_gap(l0, l1), 1e-4) << "the groups should have read different batches";
    if (step == 2) {
      for (float m : mb) ASSERT_EQ(m, 0.0f);
    } else {
      EXPECT_TRUE(tb == prev_theta) << "step " << step;
      EXPECT_TRUE(mb == prev_m) << "step " << step;
    }
    std::vector<float> want_t(tb.size()), want_m(tb.size());
    for (size_t i = 0; i < tb.size(); ++i) {
      const double delta = ((double(tb[i]) - l0[i]) + (double(tb[i]) - l1[i])) / 2;
      want_m[i] = averaged[i] ? 0.0f : float(mu * double(mb[i]) + delta);
      want_t[i] = averaged[i] ? float(double(tb[i]) - delta)
                              : float(double(tb[i]) - lr * (delta + mu * double(want_m[i])));
    }
    EXPECT_LE(max_rel_gap(want_m, ma), 1e-6) << "momentum, step " << step;
    EXPECT_LE(max_rel_gap(want_t, ta), 1e-6) << "theta_global, step " << step;
    // The step moved the parameters: not the mean of the groups, not either group's.
    EXPECT_GT(max_rel_gap(ta, l0), 1e-5);
    prev_theta = ta, prev_m = ma;
  }
  EXPECT_TRUE(final_params(d / "run") == prev_theta);

  // Group 0 alone: 2 ranks (ep 2), batch 4, the same schedule, stopped after 2 steps.
  const auto [c2, o2] = run_command(
      std::string(kEnv) + MOE_BINARY + " launch --nproc-per-node 2 -- " + MOE_BINARY +
      " train --config " + config_path("dist_deepseek") + " --checkpoint.dir " + (d / "half") +
      " --samples 0 --parallel.ep 2 --train.batch 4 --train.steps 6 --checkpoint.stop_after 2");
  ASSERT_EQ(c2, 0) << o2;
  ModelConfig cfg;
  std::vector<float> half;
  load_checkpoint(d / "half/checkpoints/step_00000002", &cfg, &half);
  const SafetensorsFile g0 = read_safetensors(d / "dump/step_00000002_group0.safetensors");
  EXPECT_TRUE(tensor(g0, "local") == half) << max_rel_gap(tensor(g0, "local"), half);
}

// Item 1c: the outer step on known vectors (5 steps, a new pseudo-gradient each) against
// PyTorch's SGD(lr, momentum, nesterov=True) with the vectors as .grad (python3-torch).
TEST(DiLoCo, OuterNesterovStepMatchesTorchSgd) {
  if (run_command("/usr/bin/python3 -c 'import torch, numpy'").first != 0)
    GTEST_SKIP() << "/usr/bin/python3 has no torch (Debian's python3-torch)";
  TempDir d("torch");
  const int64_t n = 4096, steps = 5;
  const float lr = 0.7f, mu = 0.9f;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> theta(n), m(n, 0.0f), deltas(size_t(n * steps));
  for (float& x : theta) x = normal(rng);
  for (float& x : deltas) x = 0.01f * normal(rng);
  auto write = [&](const std::string& name, const std::vector<float>& v) {
    std::ofstream f(d / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(float)));
  };
  write("theta.bin", theta);
  write("deltas.bin", deltas);
  for (int64_t k = 0; k < steps; ++k)
    outer_nesterov_step(theta.data(), m.data(), deltas.data() + k * n, n, lr, mu);
  const std::string py =
      "import numpy as np, torch\n"
      "d = '" +
      d.path.string() +
      "'\n"
      "p = torch.nn.Parameter(torch.from_numpy(np.fromfile(d + '/theta.bin', np.float32)))\n"
      "g = np.fromfile(d + '/deltas.bin', np.float32).reshape(5, -1)\n"
      "opt = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)\n"
      "for k in range(5):\n"
      "    p.grad = torch.from_numpy(g[k].copy())\n"
      "    opt.step()\n"
      "p.detach().numpy().tofile(d + '/theta_torch.bin')\n"
      "opt.state[p]['momentum_buffer'].numpy().tofile(d + '/m_torch.bin')\n";
  {
    std::ofstream f(d / "ref.py");
    f << py;
  }
  const auto [code, out] = run_command("/usr/bin/python3 " + (d / "ref.py"));
  ASSERT_EQ(code, 0) << out;
  auto read = [&](const std::string& name) {
    const std::string b = read_bytes(d / name);
    std::vector<float> v(b.size() / sizeof(float));
    std::memcpy(v.data(), b.data(), v.size() * sizeof(float));
    return v;
  };
  EXPECT_LE(max_rel_gap(read("theta_torch.bin"), theta), 1e-6);
  EXPECT_LE(max_rel_gap(read("m_torch.bin"), m), 1e-6);
  // The comparison can tell the momentum: the same steps without it end elsewhere.
  std::vector<float> plain = read("theta.bin"), zero(theta.size(), 0.0f);
  for (int64_t k = 0; k < steps; ++k)
    outer_nesterov_step(plain.data(), zero.data(), deltas.data() + k * n, n, lr, 0.0f);
  EXPECT_GT(max_rel_gap(read("theta_torch.bin"), plain), 1e-3);
}

// The undisturbed 2-group run of dist_diloco.toml (8 steps, a checkpoint every 2), once per
// test binary.
const std::string& undisturbed() {
  static TempDir root("reference");
  static const std::string dir = root / "run";
  static bool done = false;
  if (!done) {
    const auto [code, out] = train("dist_diloco", dir, 4);
    EXPECT_EQ(code, 0) << out;
    done = true;
  }
  return dir;
}

// Item 2: stop_after 3 stops at the next outer sync (step 4) with a checkpoint holding the
// outer momentum and both groups' AdamW moments; --resume runs steps 5..8: the losses and the
// final weights of the undisturbed run, bitwise. A job with another number of groups is refused.
TEST(DiLoCo, StopAndResumeGiveTheBitsOfAnUndisturbedRun) {
  const std::string& ref = undisturbed();
  TempDir d("resume");
  const auto [c0, o0] = train("dist_diloco", d / "run", 4, "--checkpoint.stop_after 3");
  ASSERT_EQ(c0, 0) << o0;
  EXPECT_EQ(losses(d / "run").size(), 4u) << o0;
  const std::string ckpt = d / "run/checkpoints/step_00000004";
  const SafetensorsFile outer = read_safetensors(ckpt + "/diloco.safetensors");
  EXPECT_TRUE(outer.has("outer_momentum"));
  EXPECT_TRUE(outer.has("group1.exp_avg") && outer.has("group1.exp_avg_sq"));
  EXPECT_EQ(outer.metadata.at("groups"), "2");
  // The groups' moments differ (each group's AdamW saw its own gradients).
  const SafetensorsFile opt = read_safetensors(ckpt + "/optimizer.safetensors");
  EXPECT_GT(max_rel_gap(tensor(opt, "exp_avg"), tensor(outer, "group1.exp_avg")), 1e-6);

  const auto [c1, o1] =
      train("dist_diloco", d / "run", 4, "--checkpoint.resume true --parallel.diloco_group 4");
  EXPECT_NE(c1, 0) << o1;
  EXPECT_NE(o1.find("holds the inner AdamW moments of 2 DiLoCo groups but this job has 1"),
            std::string::npos)
      << o1;

  const auto [c2, o2] = train("dist_diloco", d / "run", 4, "--checkpoint.resume true");
  ASSERT_EQ(c2, 0) << o2;
  EXPECT_NE(o2.find("resume: DiLoCo outer momentum and the AdamW moments of 2 groups"),
            std::string::npos)
      << o2;
  EXPECT_EQ(losses(ref).size(), 8u);
  EXPECT_EQ(losses(ref), losses(d / "run"));
  EXPECT_TRUE(read_bytes(ref + "/model.safetensors") == read_bytes(d / "run/model.safetensors"));
}

// Item 2 (elastic): rank 3 dies by SIGKILL at step 5; moe launch --max-restarts 1 starts the job
// again, which resumes from the step-4 checkpoint: one step redone, the undisturbed bits.
TEST(DiLoCo, KilledRankCostsAtMostOneCheckpointInterval) {
  const std::string& ref = undisturbed();
  TempDir d("elastic");
  const auto [code, out] =
      train("dist_diloco", d / "run", 4, "--log.fault_inject kill@5:r3", "", "--max-restarts 1");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("restarting the job (restart 1 of 1)"), std::string::npos) << out;
  std::vector<int64_t> resumed_at;
  for (const json& e : records(d / "run", "event"))
    if (e.value("event", "") == "resume") resumed_at.push_back(e.at("step").get<int64_t>());
  ASSERT_EQ(resumed_at.size(), 1u);
  EXPECT_EQ(resumed_at[0], 4);
  EXPECT_EQ(losses(ref), losses(d / "run"));
  EXPECT_TRUE(read_bytes(ref + "/model.safetensors") == read_bytes(d / "run/model.safetensors"));
}

// [parallel] outer_comm_dtype = "int8": the pseudo-gradients cross as INT8 with a scale per 128
// values. Each outer step is the hand computation's up to that rounding (at most 1/127 of the
// largest pseudo-gradient value, through lr (1 + mu)), not exactly it; the groups still agree
// bitwise; each rank sends about a quarter of the fp32 run's bytes.
TEST(DiLoCo, Int8PseudoGradientsSendAQuarterOfTheBytes) {
  const std::string& ref = undisturbed();
  TempDir d("int8");
  const auto [code, out] =
      train("dist_diloco", d / "run", 4, "--train.steps 4 --parallel.outer_comm_dtype int8",
            "MOE_TEST_DILOCO_DUMP=" + (d / "dump"));
  ASSERT_EQ(code, 0) << out;
  const float lr = 0.7f, mu = 0.9f;
  const std::vector<bool> averaged = balancing_biases(d / "run");
  for (int step : {2, 4}) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08d_group", step);
    const SafetensorsFile g0 = read_safetensors(d / "dump/" + name + "0.safetensors");
    const SafetensorsFile g1 = read_safetensors(d / "dump/" + name + "1.safetensors");
    EXPECT_TRUE(tensor(g0, "theta_after") == tensor(g1, "theta_after")) << step;
    const std::vector<float> l0 = tensor(g0, "local"), l1 = tensor(g1, "local");
    const std::vector<float> tb = tensor(g0, "theta_before"), mb = tensor(g0, "momentum_before");
    const std::vector<float> ta = tensor(g0, "theta_after");
    double worst = 0, amax = 0;
    for (size_t i = 0; i < tb.size(); ++i) {
      const double d0 = double(tb[i]) - l0[i], d1 = double(tb[i]) - l1[i];
      const double delta = (d0 + d1) / 2, m = mu * double(mb[i]) + delta;
      const double want = averaged[i] ? double(tb[i]) - delta : double(tb[i]) - lr * (delta + mu * m);
      worst = std::max(worst, std::abs(want - ta[i]));
      amax = std::max({amax, std::abs(d0), std::abs(d1)});
    }
    EXPECT_GT(worst, 1e-9) << "no rounding: was the pseudo-gradient compressed?";
    EXPECT_LE(worst, lr * (1 + mu) * amax / 127) << "step " << step;
  }
  const std::vector<json> fp32 = records(ref, "diloco_sync"),
                          int8 = records(d / "run", "diloco_sync");
  ASSERT_GE(fp32.size(), 2u);
  ASSERT_EQ(int8.size(), 2u);
  const double sent32 = fp32[0].at("sent_bytes_per_rank"),
               sent8 = int8[0].at("sent_bytes_per_rank");
  EXPECT_GT(sent8, 0);
  EXPECT_GE(sent32, double(fp32[0].at("bytes_per_rank")) * 0.9);  // 2 ranks: about n floats
  EXPECT_LE(sent8 / sent32, 0.27) << sent8 << " vs " << sent32;
}

// Item 3: groups that do not divide the job or are not a dp x ep grid, and a checkpoint
// interval between outer syncs, stop the job with one clear error.
TEST(DiLoCo, BadConfigsStopWithOneClearError) {
  TempDir d("bad");
  struct Case {
    int ranks;
    std::string flags, expect;
  };
  const std::vector<Case> cases = {
      {4, "--parallel.diloco_group 3",
       "the job has 4 ranks, not divisible by [parallel] diloco_group = 3"},
      {4, "--parallel.diloco_group 1",
       "a DiLoCo group has 1 rank, not divisible by [parallel] ep = 2"},
      {4, "--checkpoint.every 3",
       "[checkpoint] every = 3 is not a multiple of [parallel] inner_steps = 2"},
      {4, "--parallel.dp 2",
       "[parallel] dp = 2 x ep = 2 is 4 ranks but a DiLoCo group has 2 ranks"},
  };
  for (const Case& c : cases) {
    const auto [code, out] = train("dist_diloco", d / "run", c.ranks, c.flags);
    EXPECT_NE(code, 0) << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.flags << "\n" << out;
  }
}

}  // namespace
}  // namespace moe
