// The cost model against published training runs, with the published layouts.
#include <gtest/gtest.h>

#include <string>

#include "plan/cluster.h"
#include "plan/cost.h"
#include "plan/model_spec.h"

namespace moe::plan {
namespace {

const std::string kRoot = MOE_SOURCE_DIR;

// DeepSeek-V3 Technical Report, arXiv 2412.19437: "training on each trillion tokens requires
// only 180K H800 GPU hours, i.e., 3.7 days on our cluster with 2048 H800 GPUs" (sec. 1).
// Layout (sec. 3.2): 16-way pipeline parallelism (DualPipe), 64-way expert parallelism over
// 8 nodes, ZeRO-1 data parallelism, no tensor parallelism; FP8 mixed precision (sec. 3.3);
// recompute of RMSNorm and MLA up-projections (sec. 3.2.3); node-limited routing, at most
// 4 nodes per token (sec. 2.1.2). Batch 15360 sequences of 4096 tokens (sec. 4.2).
// Micro-batch size is not published; we take one sequence.
TEST(PlanPublished, DeepSeekV3DeviceHoursPerTrillionTokens) {
  const PlanModel m = load_plan_model(kRoot + "/configs/models/deepseek_v3.json");
  const Cluster c = load_cluster(kRoot + "/configs/clusters/h800.toml");
  Job job;
  job.devices = 2048, job.global_batch = 15360, job.seq = 4096, job.tokens = 1e12;
  Layout l = parse_layout("tp=1,pp=16,ep=64,mb=1,sched=dualpipe,recompute=selective,zero=1,"
                          "dtype=fp8,nodelimit=1");
  std::string why;
  ASSERT_TRUE(complete_layout(m, c, job, l, &why)) << why;
  EXPECT_EQ(l.dp, 128);
  EXPECT_EQ(l.num_micro, 120);
  EXPECT_EQ(nodes_spanned(l.ep, 1, c.devices_per_node), 8);  // "64-way EP over 8 nodes"
  const Memory mem = memory_per_device(m, c, job, l);
  // The run fitted in 80 GiB. Our activation count is conservative (every saved tensor of
  // every in-flight micro-batch, no offload), so we only require it within 25% of that.
  EXPECT_LT(mem.total, 1.25 * 80.0 * (1 << 30)) << mem.total / (1 << 30) << " GiB";
  const Time t = step_time(m, c, job, l);
  const double published = 180e3;
  EXPECT_NEAR(t.device_hours, published, 0.25 * published)
      << "step " << t.step << " s, compute " << t.compute << ", bubble " << t.bubble
      << ", exposed comm " << t.exposed_comm;
}

// Megatron-Core MoE (megatron/core/transformer/moe/README.md, MCore v0.9): "Mixtral 8X7B
// bf16 training to achieve 468 TFLOPS" on H100. Layout published with it: 64 H100,
// TP1 PP4 EP8, sequence length 4096, micro-batch 1, global batch 256, BF16, distributed
// optimizer (ZeRO-1); we assume the plain 1F1B schedule and no recomputation. Megatron counts
// attention FLOPs over the full T x T square, so we compare that convention.
TEST(PlanPublished, Mixtral8x7bTflopsPerGpu) {
  const PlanModel m = load_plan_model(kRoot + "/configs/models/mixtral_8x7b.json");
  const Cluster c = load_cluster(kRoot + "/configs/clusters/h100.toml");
  Job job;
  job.devices = 64, job.global_batch = 256, job.seq = 4096;
  Layout l = parse_layout("tp=1,pp=4,ep=8,mb=1,sched=1f1b,recompute=none,zero=1,dtype=bf16");
  std::string why;
  ASSERT_TRUE(complete_layout(m, c, job, l, &why)) << why;
  EXPECT_EQ(l.dp, 16);
  EXPECT_EQ(l.num_micro, 16);
  EXPECT_EQ(nodes_spanned(l.ep, 1, c.devices_per_node), 1);  // EP8 inside a node
  EXPECT_TRUE(memory_per_device(m, c, job, l).fits());
  const Time t = step_time(m, c, job, l);
  const double published = 468;
  EXPECT_NEAR(t.megatron_tflops_per_device, published, 0.25 * published)
      << "step " << t.step << " s, compute " << t.compute << ", bubble " << t.bubble
      << ", exposed comm " << t.exposed_comm;
}

}  // namespace
}  // namespace moe::plan
