// Slow-link terms of the cost model (issue 16) against values worked out by hand: wire formats,
// ring, direct-exchange and two-level collectives across nodes, compressed gradients,
// all-to-all formats, DiLoCo, the per-node link of a cluster file, trainer run configs, and
// the parse errors.
// Tiny model and toy cluster: plan_fixtures.h (2 devices per node, intra 100 B/s, inter 10 B/s
// per device, no latency; 1440 non-expert + 768 expert parameters).
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "plan/cost.h"
#include "plan/run_spec.h"
#include "plan_fixtures.h"

namespace moe::plan {
namespace {

using fixtures::tiny;
using fixtures::toy_cluster;

const std::string kRoot = MOE_SOURCE_DIR;

std::string layout_error(const std::string& spec) {
  try {
    parse_layout(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Time time_of(const std::string& spec, int64_t devices, Layout* out = nullptr) {
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();
  Job job;
  job.devices = devices, job.global_batch = devices, job.seq = 6;  // one 6-token sequence each
  Layout l = parse_layout(spec);
  std::string why;
  EXPECT_TRUE(complete_layout(m, c, job, l, &why)) << spec << ": " << why;
  if (out) *out = l;
  return step_time(m, c, job, l);
}

TEST(PlanSlowLinks, WireBytes) {
  EXPECT_DOUBLE_EQ(wire_bytes(Wire::kFp32), 4.0);
  EXPECT_DOUBLE_EQ(wire_bytes(Wire::kBf16), 2.0);
  EXPECT_DOUBLE_EQ(wire_bytes(Wire::kInt8), 1.03125);  // 1 + 4/128
  EXPECT_DOUBLE_EQ(wire_bytes(Wire::kFp8), 1.03125);
  EXPECT_THROW(wire_bytes(Wire::kAuto), Error);
}

TEST(PlanSlowLinks, RingCollectiveSharesTheNodeLink) {
  const Cluster c = toy_cluster();
  // 4 ranks on 2 nodes of 2: every ring edge carries 3/4 * 1000 = 750; the edge leaving a
  // node gets both members' NIC shares, 2 * 10 B/s: 750 / 20 = 37.5 s.
  GroupSpan g = group_span(4, 1, 2);
  EXPECT_EQ(g.nodes, 2);
  EXPECT_DOUBLE_EQ(g.per_node, 2.0);
  CommCost r = ring_collective(c, 1000, g);
  EXPECT_DOUBLE_EQ(r.time, 37.5);
  EXPECT_DOUBLE_EQ(r.inter_bytes, 375.0);  // 750 per node, 2 members
  EXPECT_DOUBLE_EQ(r.intra_bytes, 375.0);  // 750 * (2-1)/2
  // One member per node (stride 2): 1/2 * 1000 over one NIC share: 500 / 10.
  r = ring_collective(c, 1000, group_span(2, 2, 2));
  EXPECT_DOUBLE_EQ(r.time, 50.0);
  EXPECT_DOUBLE_EQ(r.inter_bytes, 500.0);
  // Inside one node: 1/2 * 1000 / 100.
  r = ring_collective(c, 1000, group_span(2, 1, 2));
  EXPECT_DOUBLE_EQ(r.time, 5.0);
  EXPECT_DOUBLE_EQ(r.inter_bytes, 0.0);
  // Latency: n-1 steps, each paying the inter-node latency.
  Cluster d = c;
  d.inter_latency = 1;
  EXPECT_DOUBLE_EQ(ring_collective(d, 1000, g).time, 37.5 + 3);
}

TEST(PlanSlowLinks, DirectExchangeSendsEveryRemoteBlock) {
  const Cluster c = toy_cluster();
  // 4 ranks, 2 per node, 1000 bytes: 2 of the 4 blocks go off-node (500 B), 1 to the
  // neighbour (250 B); max(500 / 10, 250 / 100) = 50 s. A node sends 1000 B off-node
  // against the ring's 750.
  const CommCost r = direct_exchange(c, 1000, group_span(4, 1, 2));
  EXPECT_DOUBLE_EQ(r.inter_bytes, 500.0);
  EXPECT_DOUBLE_EQ(r.intra_bytes, 250.0);
  EXPECT_DOUBLE_EQ(r.time, 50.0);
  // Inside one node: 1/2 of 1000 to the neighbour at 100 B/s.
  EXPECT_DOUBLE_EQ(direct_exchange(c, 1000, group_span(2, 1, 2)).time, 5.0);
}

// 4 devices = 2 nodes of 2, dp = edp = 4, bf16: non-expert 1440 and expert 768 parameters,
// gradients and parameters 2 bytes each by ring: edges 3/4*2880 = 2160 and 3/4*1536 = 1152
// over 20 B/s per node: reduce-scatter 108 + 57.6 = 165.6 s, all-gather the same.
TEST(PlanSlowLinks, GradientSyncAcrossNodes) {
  const Time t = time_of("ep=1,mb=1,zero=1,dtype=bf16", 4);
  EXPECT_NEAR(t.dp_rs, 165.6, 1e-9);
  EXPECT_NEAR(t.dp_ag, 165.6, 1e-9);
  EXPECT_NEAR(t.inter_grad, 1080.0 + 576.0, 1e-9);  // 2160/2 + 1152/2 per device
  EXPECT_NEAR(t.inter_param, 1656.0, 1e-9);
  // Overlap: backward 105.997632 s hides part of the reduce-scatter, forward 52.998816 s part
  // of the all-gather (StepTimeOneDevice: the same 6 tokens per device).
  EXPECT_NEAR(t.dp_exposed, (165.6 - 105.997632) + (165.6 - 52.998816), 1e-6);
  EXPECT_NEAR(t.inter_bytes, 3312.0, 1e-9);
  const Time s = time_of("ep=1,mb=1,zero=1,dtype=bf16,overlap=0", 4);
  EXPECT_NEAR(s.dp_exposed, 331.2, 1e-9);  // nothing hidden
}

TEST(PlanSlowLinks, NetworkCpuSlowsTheComputeItHidesUnder) {
  const PlanModel m = tiny();
  Cluster c = toy_cluster();
  c.inter_cpu_per_byte = 0.01;  // s per byte sent or received
  Job job;
  job.devices = 4, job.global_batch = 4, job.seq = 6;
  Layout l = parse_layout("ep=1,mb=1,dtype=bf16");
  ASSERT_TRUE(complete_layout(m, c, job, l, nullptr));
  const Time t = step_time(m, c, job, l);
  // 3312 B sent and as many received, 0.01 s each, times the hidden share of the sync:
  // (331.2 - 172.203552) / 331.2 (GradientSyncAcrossNodes): 66.24 * 158.996448 / 331.2.
  EXPECT_NEAR(t.net_cpu, 0.2 * 158.996448, 1e-6);
  EXPECT_NEAR(t.step, t.compute + t.exposed_comm + t.optimizer + t.net_cpu, 1e-9);
  l.overlap = false;  // all exposed: the cores wait anyway
  EXPECT_DOUBLE_EQ(step_time(m, c, job, l).net_cpu, 0.0);
}

TEST(PlanSlowLinks, GroupSpanSaysIfNodesHoldEqualShares) {
  EXPECT_TRUE(group_span(4, 1, 2).even);   // 2 + 2
  EXPECT_TRUE(group_span(4, 2, 2).even);   // one per node
  EXPECT_TRUE(group_span(8, 2, 8).even);   // members 0, 2, ..., 14: 4 + 4
  EXPECT_TRUE(group_span(2, 1, 2).even);   // one node
  EXPECT_FALSE(group_span(3, 1, 2).even);  // 2 + 1
  EXPECT_FALSE(group_span(6, 1, 4).even);  // 4 + 2, though 3 a node on average
  EXPECT_FALSE(group_span(3, 3, 4).even);  // members 0, 3, 6: 2 + 1
}

TEST(PlanSlowLinks, CompressedReduceScatterIsTwoLevelAcrossEqualNodes) {
  const Cluster c = toy_cluster();
  // 1000 values at 1 byte, 4 ranks on 2 nodes of 2 (H = L = 2), blocks of 250 values:
  //   1. in f32 inside the node, (L-1) * H * 250 * 4 = 2000 B at 100 B/s: 20 s;
  //   2. across, (H-1) * 250 = 250 B at 10 B/s: 25 s; the flat exchange sent 500 B.
  CommCost r = compressed_reduce_scatter(c, 1000, 1.0, group_span(4, 1, 2));
  EXPECT_DOUBLE_EQ(r.intra_bytes, 2000.0);
  EXPECT_DOUBLE_EQ(r.inter_bytes, 250.0);
  EXPECT_DOUBLE_EQ(r.time, 45.0);
  // The stages follow each other, each paying its latency.
  Cluster d = c;
  d.intra_latency = 1, d.inter_latency = 2;
  EXPECT_DOUBLE_EQ(compressed_reduce_scatter(d, 1000, 1.0, group_span(4, 1, 2)).time, 48.0);
  // 8 ranks on 2 nodes of 4, bf16: blocks of 125 values; 3 * 2 * 125 * 4 = 3000 B inside
  // (30 s), 125 * 2 = 250 B across (25 s): a quarter of the flat exchange's (8-4)/8 * 2000.
  r = compressed_reduce_scatter(c, 1000, 2.0, group_span(8, 1, 4));
  EXPECT_DOUBLE_EQ(r.intra_bytes, 3000.0);
  EXPECT_DOUBLE_EQ(r.inter_bytes, 250.0);
  EXPECT_DOUBLE_EQ(r.time, 55.0);
  // One rank per node: the flat exchange, 3/4 of 1000 B off-node at 10 B/s.
  r = compressed_reduce_scatter(c, 1000, 1.0, group_span(4, 2, 2));
  EXPECT_DOUBLE_EQ(r.inter_bytes, 750.0);
  EXPECT_DOUBLE_EQ(r.intra_bytes, 0.0);
  EXPECT_DOUBLE_EQ(r.time, 75.0);
  // Unequal nodes (2 + 1): flat, (3 - 1.5)/3 of it off-node, 0.5/3 to node peers.
  r = compressed_reduce_scatter(c, 1000, 1.0, group_span(3, 1, 2));
  EXPECT_DOUBLE_EQ(r.inter_bytes, 500.0);
  EXPECT_DOUBLE_EQ(r.time, 50.0);
  // One node: flat, 1/2 of it to the neighbour at 100 B/s.
  r = compressed_reduce_scatter(c, 1000, 1.0, group_span(2, 1, 2));
  EXPECT_DOUBLE_EQ(r.intra_bytes, 500.0);
  EXPECT_DOUBLE_EQ(r.time, 5.0);
}

TEST(PlanSlowLinks, CompressedGradientsTwoLevel) {
  // dp = edp = 4 on 2 nodes of 2: two-level. int8, non-expert 1440 parameters in blocks of
  // 360: f32 2 * 360 * 4 = 2880 B inside (28.8 s), then 360 * 1.03125 = 371.25 B across
  // (37.125 s); expert 768 in blocks of 192: 1536 B (15.36 s), then 198 B (19.8 s).
  // Parameters stay bf16 by ring (165.6 s).
  Time t = time_of("ep=1,mb=1,dtype=bf16,gradcomm=int8", 4);
  EXPECT_NEAR(t.dp_rs, 28.8 + 37.125 + 15.36 + 19.8, 1e-9);
  EXPECT_NEAR(t.inter_grad, 371.25 + 198.0, 1e-9);  // half the flat exchange's 1138.5
  EXPECT_NEAR(t.dp_ag, 165.6, 1e-9);
  EXPECT_NEAR(t.inter_param, 1656.0, 1e-9);
  // bf16: 720 and 384 B across (72 + 38.4 s) after the same f32 stage: 154.56 s, now faster
  // than the bf16 ring (165.6 s); the flat exchange took 220.8 s.
  t = time_of("ep=1,mb=1,dtype=bf16,gradcomm=bf16", 4);
  EXPECT_NEAR(t.dp_rs, 28.8 + 72.0 + 15.36 + 38.4, 1e-9);
  EXPECT_NEAR(t.inter_grad, 1104.0, 1e-9);
  // fp32 gradients by ring in a bf16 run: edges 3/4 * 5760 and 3/4 * 3072 over 20 B/s.
  t = time_of("ep=1,mb=1,dtype=bf16,gradcomm=fp32", 4);
  EXPECT_NEAR(t.dp_rs, 216.0 + 115.2, 1e-9);
  // ep = 2: edp = 2 ranks spaced 2 apart, one per node: expert gradients (768 / 2 = 384
  // values, 396 B) by the flat exchange, half off-node: 198 B, 19.8 s.
  t = time_of("ep=2,mb=1,dtype=bf16,gradcomm=int8", 4);
  EXPECT_NEAR(t.dp_rs, 28.8 + 37.125 + 19.8, 1e-9);
  EXPECT_NEAR(t.inter_grad, 371.25 + 198.0, 1e-9);
}

TEST(PlanSlowLinks, AllToAllWireFormats) {
  // ep = 4 over 2 nodes, 6 tokens per device, K = 2, D = 8: half of the 12 rows leave the
  // node, a quarter go to the neighbour. fp8 dispatch 6*2*(1/2)*8*1.03125 = 49.5 B off-node
  // (24.75 B on-node): max(4.95, 0.2475) s; bf16 combine 96 B (48): 9.6 s. Forward and
  // backward, 2 MoE layers: 2 * 2 * (4.95 + 9.6) = 58.2 s.
  Time t = time_of("ep=4,mb=1,dtype=bf16,dispatch=fp8,combine=bf16", 4);
  EXPECT_NEAR(t.a2a, 58.2, 1e-9);
  EXPECT_NEAR(t.inter_a2a, 2 * 2 * (49.5 + 96.0), 1e-9);
  // fp32 both ways in an fp32 run: 192 B each way: 19.2 s per all-to-all.
  t = time_of("ep=4,mb=1,dtype=fp32", 4);
  EXPECT_NEAR(t.a2a, 2 * 2 * (19.2 + 19.2), 1e-9);
  EXPECT_NEAR(t.inter_a2a, 2 * 2 * (192.0 + 192.0), 1e-9);
  // Node-limited routing, 2 groups of 2 experts (one per node), 1 group per token: with dedup
  // a token crosses once to the remote node with probability 1/2: 6 * 1/2 * 32 = 96 B per
  // all-to-all, 9.6 s; without dedup (K rows on their own) the 192 B of plain routing.
  {
    PlanModel m = tiny();
    m.cfg.n_group = 2, m.cfg.topk_group = 1;
    const Cluster c = toy_cluster();
    Job job;
    job.devices = 4, job.global_batch = 4, job.seq = 6;
    Layout a = parse_layout("ep=4,mb=1,dtype=fp32,nodelimit=1");
    Layout b = parse_layout("ep=4,mb=1,dtype=fp32,nodelimit=1,dedup=0");
    ASSERT_TRUE(complete_layout(m, c, job, a, nullptr));
    ASSERT_TRUE(complete_layout(m, c, job, b, nullptr));
    EXPECT_NEAR(step_time(m, c, job, a).inter_a2a, 2 * 2 * (96.0 + 96.0), 1e-9);
    EXPECT_NEAR(step_time(m, c, job, b).inter_a2a, 2 * 2 * (192.0 + 192.0), 1e-9);
    EXPECT_EQ(b.str(), "tp1 pp1 ep4 dp4 mb1x1 1f1b none zero1 fp32 nodelim:copies");
  }
  // Full recompute repeats the forward trip: 3 trips.
  t = time_of("ep=4,mb=1,dtype=fp32,recompute=full", 4);
  EXPECT_NEAR(t.a2a, 3 * 2 * (19.2 + 19.2), 1e-9);
}

TEST(PlanSlowLinks, DiLoCoSyncsGroupsEveryHSteps) {
  // Groups of one node (2 devices): the per-step sync is the 2 ranks of a node, by ring at
  // 100 B/s: 1/2 * 2880 / 100 + 1/2 * 1536 / 100 = 22.08 s each way, nothing off-node.
  Layout l;
  Time t = time_of("ep=1,mb=1,dtype=bf16,diloco=10", 4, &l);
  const SyncGroups g = sync_groups(toy_cluster(), l);
  EXPECT_EQ(g.groups, 2);
  EXPECT_EQ(g.devices, 2);
  EXPECT_EQ(g.dp, 2);
  EXPECT_NEAR(t.dp_rs, 22.08, 1e-9);
  EXPECT_NEAR(t.dp_ag, 22.08, 1e-9);
  EXPECT_DOUBLE_EQ(t.inter_grad, 0.0);
  // Outer sync: 2 groups, one device per node; each device syncs its ZeRO-1 shard, 1440/2 +
  // 768/2 = 1104 parameters in fp32 (4416 B): reduce-scatter and all-gather by ring,
  // 1/2 * 4416 / 10 B/s = 220.8 s each.
  EXPECT_NEAR(t.outer_sync, 441.6, 1e-9);
  EXPECT_NEAR(t.outer_step, 1104 * 28 / 1e6, 1e-12);  // 28 B per parameter at 1e6 B/s
  EXPECT_NEAR(t.diloco, (441.6 + 0.030912) / 10, 1e-9);
  EXPECT_NEAR(t.outer_inter_bytes, 4416.0, 1e-9);
  EXPECT_NEAR(t.inter_diloco, 441.6, 1e-9);
  EXPECT_NEAR(t.inter_bytes, 441.6, 1e-9);
  EXPECT_NEAR(t.step, t.compute + t.bubble + t.exposed_comm + t.optimizer + t.diloco, 1e-9);
  // ZeRO-1 shards over the group's 2 ranks: AdamW over 2208 / 2 parameters.
  EXPECT_NEAR(t.optimizer, 1104 * 30 / 1e6, 1e-12);
  // int8: 1104 * 1.03125 = 1138.5 B; reduce-scatter by direct exchange 569.25 B, all-gather
  // by ring 569.25 B, each at 10 B/s.
  t = time_of("ep=1,mb=1,dtype=bf16,diloco=50,outercomm=int8", 4);
  EXPECT_NEAR(t.outer_sync, 113.85, 1e-9);
  EXPECT_NEAR(t.outer_inter_bytes, 1138.5, 1e-9);
  EXPECT_NEAR(t.inter_diloco, 1138.5 / 50, 1e-9);
  // ZeRO-0: the optimizer owns all 2208 parameters: 8832 B, 441.6 s each way.
  // The outer int8 sync is the trainer's compressed all_reduce, flat even where two-level
  // would apply: groups of one device, 4 ranks on 2 nodes; 2208 * 1.03125 = 2277 B, half of
  // it off-node (113.85 s), then the ring all-gather, 3/4 * 2277 over 20 B/s (85.3875 s).
  t = time_of("ep=1,mb=1,dtype=bf16,diloco=10,dilocogroup=1,outercomm=int8", 4);
  EXPECT_NEAR(t.outer_sync, 113.85 + 85.3875, 1e-9);
  EXPECT_NEAR(t.outer_inter_bytes, 1138.5 + 853.875, 1e-9);
  t = time_of("ep=1,mb=1,dtype=bf16,zero=0,diloco=10", 4);
  EXPECT_NEAR(t.outer_sync, 883.2, 1e-9);
  // Groups of one device (the whole model is the shard): the outer ring spans 4 ranks on 2
  // nodes (the ring formula again: 3/4 * 8832 over 20 B/s, twice); no per-step sync.
  t = time_of("ep=1,mb=1,dtype=bf16,diloco=10,dilocogroup=1", 4);
  EXPECT_NEAR(t.outer_sync, 2 * 331.2, 1e-9);
  EXPECT_DOUBLE_EQ(t.dp_comm, 0.0);
}

TEST(PlanSlowLinks, CommStateMemory) {
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();
  Job job;
  job.devices = 4, job.global_batch = 4, job.seq = 6;
  Layout plain = parse_layout("ep=1,mb=1"), comp = parse_layout("ep=1,mb=1,gradcomm=int8"),
         dil = parse_layout("ep=1,mb=1,diloco=10");
  for (Layout* l : {&plain, &comp, &dil}) ASSERT_TRUE(complete_layout(m, c, job, *l, nullptr));
  EXPECT_DOUBLE_EQ(memory_per_device(m, c, job, plain).comm_state, 0.0);
  EXPECT_DOUBLE_EQ(memory_per_device(m, c, job, comp).comm_state, 4.0 * 2208);  // residual
  const Memory md = memory_per_device(m, c, job, dil);
  EXPECT_DOUBLE_EQ(md.comm_state, 8.0 * 1104);  // anchor + momentum of the ZeRO-1 shard
  // ZeRO-1 optimizer state over the group's 2 ranks: 12/2 bytes per parameter.
  EXPECT_DOUBLE_EQ(md.optimizer, 6.0 * 2208);
}

TEST(PlanSlowLinks, ParseErrorsNameTheItemAndAllowedValues) {
  std::string e = layout_error("gradcomm=fp16");
  EXPECT_NE(e.find("gradcomm=fp16"), std::string::npos) << e;
  EXPECT_NE(e.find("allowed fp32, bf16, int8"), std::string::npos) << e;
  e = layout_error("dispatch=int8");
  EXPECT_NE(e.find("dispatch=int8: allowed fp32, bf16, fp8"), std::string::npos) << e;
  e = layout_error("combine=fp8");
  EXPECT_NE(e.find("combine=fp8: allowed fp32, bf16"), std::string::npos) << e;
  e = layout_error("outercomm=bf16");
  EXPECT_NE(e.find("outercomm=bf16: allowed fp32, int8"), std::string::npos) << e;
  e = layout_error("diloco=often");
  EXPECT_NE(e.find("diloco=often: expected a non-negative integer"), std::string::npos) << e;
  e = layout_error("dilocogroup=-2");
  EXPECT_NE(e.find("dilocogroup=-2"), std::string::npos) << e;
  e = layout_error("diloc=50");
  EXPECT_NE(e.find("unknown item 'diloc'"), std::string::npos) << e;
  EXPECT_NE(e.find("diloco, dilocogroup, outercomm"), std::string::npos) << e;
  // Later items override earlier ones (a run config's items, then --layout).
  const Layout l = parse_layout("gradcomm=int8,dispatch=fp8,combine=bf16,diloco=50,"
                                "dilocogroup=8,outercomm=int8,overlap=0,gradcomm=bf16");
  EXPECT_EQ(l.grad_comm, Wire::kBf16);
  EXPECT_EQ(l.dispatch, Wire::kFp8);
  EXPECT_EQ(l.combine, Wire::kBf16);
  EXPECT_EQ(l.diloco_h, 50);
  EXPECT_EQ(l.diloco_group, 8);
  EXPECT_EQ(l.outer_comm, Wire::kInt8);
  EXPECT_FALSE(l.overlap);
  EXPECT_EQ(l.str(), "tp1 pp1 ep1 dp1 mb1x1 1f1b none zero1 bf16 grad:bf16 disp:fp8 comb:bf16 "
                     "no-overlap diloco50/g8:int8");
}

TEST(PlanSlowLinks, DiLoCoLayoutChecks) {
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();  // 2 devices per node
  Job job;
  job.devices = 4, job.global_batch = 4, job.seq = 6;
  std::string why;
  Layout l = parse_layout("diloco=10,dilocogroup=4");
  EXPECT_FALSE(complete_layout(m, c, job, l, &why));
  EXPECT_NE(why.find("at least 2 groups"), std::string::npos) << why;
  l = parse_layout("diloco=10,dilocogroup=3");
  EXPECT_FALSE(complete_layout(m, c, job, l, &why));
  EXPECT_NE(why.find("dilocogroup does not divide"), std::string::npos) << why;
  l = parse_layout("diloco=10,ep=4");  // groups of one node hold 2 devices
  EXPECT_FALSE(complete_layout(m, c, job, l, &why));
  EXPECT_NE(why.find("ep does not fit inside a DiLoCo group"), std::string::npos) << why;
  l = parse_layout("diloco=10,ep=2");
  EXPECT_TRUE(complete_layout(m, c, job, l, &why)) << why;
}

TEST(PlanSlowLinks, ClusterLinkSharedByTheNode) {
  const std::string base = "name = \"t\"\n[device]\npeak_tflops_bf16 = 1\nmemory_gib = 1\n"
                           "memory_bandwidth_gbs = 10\n[node]\ndevices = 2\n[efficiency]\n"
                           "gemm = 0.5\nattention = 0.5\nmemory = 0.5\n[network]\n"
                           "intra_bandwidth_gbs = 10\n";
  // 1 Gbit/s = 125 MB/s each way, shared by 2 devices: 62.5 MB/s each.
  Cluster c = parse_cluster(base + "inter_link_gbit = 1\n", "x.toml");
  EXPECT_DOUBLE_EQ(c.inter_bandwidth, 62.5e6);
  c = parse_cluster(base + "inter_link_gbit = 0.1\n", "x.toml");
  EXPECT_DOUBLE_EQ(c.inter_bandwidth, 6.25e6);
  try {
    parse_cluster(base + "inter_link_gbit = 1\ninter_bandwidth_gbs = 1\n", "x.toml");
    ADD_FAILURE() << "both keys accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep one"), std::string::npos) << e.what();
  }
  for (const char* f : {"emulated_2x2_1gbit.toml", "emulated_2x2_100mbit.toml"}) {
    const Cluster e = load_cluster(kRoot + "/configs/clusters/" + f);
    EXPECT_EQ(e.devices_per_node, 2) << f;
  }
  EXPECT_DOUBLE_EQ(load_cluster(kRoot + "/configs/clusters/emulated_2x2_1gbit.toml").inter_bandwidth,
                   62.5e6);
  EXPECT_DOUBLE_EQ(
      load_cluster(kRoot + "/configs/clusters/emulated_2x2_100mbit.toml").inter_bandwidth, 6.25e6);
}

TEST(PlanSlowLinks, RunConfigGivesModelJobAndLayout) {
  const std::string text = R"([model]
hidden_size = 64
num_attention_heads = 4
num_key_value_heads = 4
head_dim = 16
n_routed_experts = 8
n_group = 2
topk_group = 1
[train]
batch = 32
seq_len = 64
accum = 2
[parallel]
dp = 2
ep = 2
grad_comm_dtype = "int8"
dispatch_dtype = "fp8"
combine_dtype = "bf16"
mode = "diloco"
inner_steps = 50
overlap = false
)";
  const RunSpec r = parse_run_spec(text, "run.toml");
  EXPECT_EQ(r.model.cfg.hidden_size, 64);
  EXPECT_EQ(r.model.cfg.n_group, 2);
  EXPECT_EQ(r.model.cfg.topk_group, 1);
  EXPECT_EQ(r.batch, 32);
  EXPECT_EQ(r.accum, 2);
  EXPECT_EQ(r.seq_len, 64);
  EXPECT_EQ(r.ranks, 4);
  EXPECT_EQ(r.layout, "ep=2,overlap=0,gradcomm=int8,dispatch=fp8,combine=bf16,diloco=50,"
                      "dilocogroup=0");
  EXPECT_EQ(run_layout(r, 4), "dtype=fp32,zero=1,mb=8," + r.layout);
  EXPECT_THROW(run_layout(r, 3), Error);  // 32 sequences over 3 ranks
  EXPECT_EQ(run_layout(r, 4, 128), "dtype=fp32,zero=1,mb=16," + r.layout);  // 128 / 2 / 4
  EXPECT_THROW(run_layout(r, 4, 33), Error);                              // not 2 micro-batches
  // --model-set writes over the model keys.
  EXPECT_EQ(parse_run_spec(text, "run.toml", "topk_group=2").model.cfg.topk_group, 2);
  // Bad names say which key and what is allowed.
  auto error_of = [](const std::string& t) {
    try {
      parse_run_spec(t, "run.toml");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string e = error_of("[parallel]\ngrad_comm_dtype = \"fp16\"\n");
  EXPECT_NE(e.find("grad_comm_dtype = \"fp16\": allowed fp32, bf16, int8"), std::string::npos)
      << e;
  e = error_of("[parallel]\nmode = \"async\"\n");
  EXPECT_NE(e.find("mode = \"async\": allowed sync, diloco"), std::string::npos) << e;
  e = error_of("[train]\nbatch = \"many\"\n");
  EXPECT_NE(e.find("run.toml:2"), std::string::npos) << e;
}

// configs/small.toml on the emulated 2 x 2 cluster, data parallel over 4 ranks: every rank
// reads 32 / 4 = 8 sequences; fp32 gradients and parameters cross the 1 Gbit/s link by ring,
// 3/4 * 4P bytes per node, so 1.5 P bytes per device each way.
TEST(PlanSlowLinks, SmallModelOnTheEmulatedCluster) {
  const RunSpec r = load_run_spec(kRoot + "/configs/small.toml");
  const ParamCounts pc = count_params(r.model);
  EXPECT_NEAR(pc.total / 1e6, 3.78, 0.01);  // `moe info configs/small.toml`
  const Cluster c = load_cluster(kRoot + "/configs/clusters/emulated_2x2_1gbit.toml");
  Job job;
  job.devices = 4, job.global_batch = r.batch * r.accum, job.seq = r.seq_len;
  Layout l = parse_layout(run_layout(r, 4));
  ASSERT_TRUE(complete_layout(r.model, c, job, l, nullptr));
  EXPECT_EQ(l.micro_batch, 8);
  EXPECT_EQ(l.num_micro, 1);
  const Time t = step_time(r.model, c, job, l);
  const double P = static_cast<double>(pc.total);
  EXPECT_NEAR(t.inter_grad, 1.5 * P, 1e-6 * P);
  EXPECT_NEAR(t.inter_param, 1.5 * P, 1e-6 * P);
  // 3/4 * 4P bytes through the 125 MB/s link at the file's efficiency, plus 3 latencies for
  // each of the two rings (non-expert and expert gradients).
  const double ring = 3.0 * P / (125e6 * c.eff.inter_comm);
  EXPECT_NEAR(t.dp_rs, ring + 6 * c.inter_latency, 1e-9);
  EXPECT_GT(t.step, t.compute);
}

}  // namespace
}  // namespace moe::plan
