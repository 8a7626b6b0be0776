// Each cost-model formula against values worked out by hand for the tiny model and toy cluster
// of plan_fixtures.h. The arithmetic is written out next to each expectation.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "plan/cost.h"
#include "plan/search.h"
#include "plan_fixtures.h"

namespace moe::plan {
namespace {

using fixtures::tiny;
using fixtures::toy_cluster;

TEST(PlanFormulas, ParameterCounts) {
  const PlanModel m = tiny();
  EXPECT_EQ(attn_params(m), 192);       // q 8*2*4=64, k+v 2*8*1*4=64, o 2*4*8=64
  EXPECT_EQ(dense_ffn_params(m), 384);  // 3*8*16
  EXPECT_EQ(expert_params(m), 96);      // 3*8*4
  EXPECT_EQ(shared_params(m), 96);      // 3*8*(1*4)
  EXPECT_EQ(router_params(m), 36);      // 4*8 weights + 4 balancing biases
  const ParamCounts p = count_params(m);
  // embed 80 + head 80 + final norm 8 + 3*(192 + 2*8 norms) + 1*384 + 2*(96 + 36)
  // + routed 2 layers * 4 experts * 96 = 80+80+8+624+384+264+768
  EXPECT_EQ(p.total, 2208);
  EXPECT_EQ(p.expert, 768);
  EXPECT_EQ(p.non_expert, 1440);
  // model/flops.h's active (norms count): head 80 + final norm 8 + 3*(192 + 2*8 norms) + 384
  // + 2*(shared 96 + router 32 + 2 experts * 96) = 80+8+624+384+640
  EXPECT_EQ(p.active, 1736);
}

TEST(PlanFormulas, MlaParameterCount) {
  PlanModel m = tiny();
  m.cfg.attention = "mla";
  m.cfg.q_lora_rank = 4, m.cfg.kv_lora_rank = 2, m.cfg.qk_nope_head_dim = 2;
  m.cfg.qk_rope_head_dim = 1, m.cfg.v_head_dim = 2;
  // q: 8*4 + 4*2*(2+1) + 4 (norm) = 60; kv: 8*(2+1) + 2*2*(2+2) + 2 (norm) = 42; o: 2*2*8 = 32
  EXPECT_EQ(attn_params(m), 134);
}

TEST(PlanFormulas, ForwardFlopsPerToken) {
  const PlanModel m = tiny();
  // full attention: 2 * T * H * (Dh + Dh) = 2*6*2*8 = 192; causal halves it
  EXPECT_DOUBLE_EQ(attn_core_flops_per_token_layer(m, 6, false), 192.0);
  EXPECT_DOUBLE_EQ(attn_core_flops_per_token_layer(m, 6, true), 96.0);
  const TokenFlops f = forward_flops_per_token(m, 6, true);
  EXPECT_DOUBLE_EQ(f.dense_gemm, 2304.0);  // 2*(3*192 + 384 + 2*96)
  EXPECT_DOUBLE_EQ(f.expert_gemm, 768.0);  // 2 * 2 layers * K=2 * 96
  EXPECT_DOUBLE_EQ(f.head_gemm, 288.0);    // 2*10*8 + 2 layers * 2*4*8
  EXPECT_DOUBLE_EQ(f.attn_core, 288.0);    // 3 layers * 96
  EXPECT_DOUBLE_EQ(train_flops_per_token(m, 6, true), 3 * 3648.0);
}

TEST(PlanFormulas, RingAndNodes) {
  // (4-1)/4 * 1000 / 100 + 3 steps * 1 s
  EXPECT_DOUBLE_EQ(ring_time(1000, 4, 100, 1), 10.5);
  EXPECT_DOUBLE_EQ(ring_time(1000, 1, 100, 1), 0.0);
  EXPECT_EQ(nodes_spanned(8, 1, 8), 1);
  EXPECT_EQ(nodes_spanned(16, 1, 8), 2);
  EXPECT_EQ(nodes_spanned(4, 8, 8), 4);                 // one member per node
  EXPECT_EQ(nodes_spanned(2, 4, 8), 1);                 // ranks 0 and 4
  EXPECT_EQ(nodes_spanned(3, 4, 8), 2);                 // ranks 0, 4, 8
  EXPECT_DOUBLE_EQ(expected_nodes_touched(2, 2), 1.5);  // 2 * (1 - 1/4)
  EXPECT_NEAR(expected_nodes_touched(8, 8), 8 * (1 - std::pow(7.0 / 8, 8)), 1e-12);
  EXPECT_DOUBLE_EQ(expected_nodes_touched(5, 1), 1.0);
}

TEST(PlanFormulas, PipelineBubbleAndInflight) {
  EXPECT_DOUBLE_EQ(bubble_time(Schedule::k1F1B, 4, 1, 1, 2, 3), 18.0);        // 3 * 6
  EXPECT_DOUBLE_EQ(bubble_time(Schedule::kInterleaved, 4, 2, 1, 2, 3), 9.0);  // 3 * 6 / 2
  EXPECT_DOUBLE_EQ(bubble_time(Schedule::kDualPipe, 8, 1, 1, 2, 0.5), 10.5);  // 3*(3 + 2 - 1.5)
  EXPECT_DOUBLE_EQ(bubble_time(Schedule::k1F1B, 1, 1, 1, 2, 3), 0.0);
  EXPECT_DOUBLE_EQ(inflight_microbatches(Schedule::k1F1B, 4, 1, 8), 4.0);
  EXPECT_DOUBLE_EQ(inflight_microbatches(Schedule::kInterleaved, 4, 2, 8), 5.5);  // 4 + 3/2
  EXPECT_DOUBLE_EQ(inflight_microbatches(Schedule::kDualPipe, 4, 1, 8), 5.0);
  EXPECT_DOUBLE_EQ(inflight_microbatches(Schedule::k1F1B, 4, 1, 2), 2.0);
}

TEST(PlanFormulas, StateBytes) {
  EXPECT_DOUBLE_EQ(state_bytes_per_param(Dtype::kBf16, 0, 4).total(), 18.0);  // 2 + 4 + 12
  EXPECT_DOUBLE_EQ(state_bytes_per_param(Dtype::kBf16, 1, 4).total(), 9.0);   // 2 + 4 + 12/4
  EXPECT_DOUBLE_EQ(state_bytes_per_param(Dtype::kBf16, 2, 4).total(), 6.0);   // 2 + 4/4 + 12/4
  EXPECT_DOUBLE_EQ(state_bytes_per_param(Dtype::kFp32, 0, 4).total(), 16.0);  // 4 + 4 + 8
}

TEST(PlanFormulas, ActivationBytes) {
  const PlanModel m = tiny();
  // dense, none: attn 2*(2D + (H+2Hkv)Dh + H*Dh) + 4H = 2*(16+16+8) + 8 = 88;
  //              ffn 2*(2D + 3F) = 2*(16 + 48) = 128
  EXPECT_DOUBLE_EQ(act_bytes_per_token_layer(m, false, Recompute::kNone, 2), 216.0);
  // MoE, none: attn 88; ffn 2*(2D + KD + 2KFe + KFe + KD + 2SFe + SFe) + 4E
  //          = 2*(16+16+16+8+16+8+4) + 16 = 184
  EXPECT_DOUBLE_EQ(act_bytes_per_token_layer(m, true, Recompute::kNone, 2), 272.0);
  // MoE, selective: attn 2*(D + 16 + 8) + 8 = 72; ffn 2*(D + 16 + 16 + 16 + 8) + 16 = 144
  EXPECT_DOUBLE_EQ(act_bytes_per_token_layer(m, true, Recompute::kSelective, 2), 216.0);
  EXPECT_DOUBLE_EQ(act_bytes_per_token_layer(m, true, Recompute::kFull, 2), 16.0);  // a*D
}

TEST(PlanFormulas, ElementwiseBytes) {
  const PlanModel m = tiny();
  // norms 4D + residuals 6D = 80, RoPE 2*(H+Hkv)*Dh = 24; dense SwiGLU 3F = 48 -> 152 * 2 bytes
  EXPECT_DOUBLE_EQ(elementwise_bytes_per_token_layer(m, false, 2), 304.0);
  // MoE: 104 + permute 3D + SwiGLU 3*K*Fe + unpermute 3D + shared 3*S*Fe = 104+24+24+24+12
  EXPECT_DOUBLE_EQ(elementwise_bytes_per_token_layer(m, true, 2), 376.0);
}

TEST(PlanFormulas, AllToAllBytes) {
  PlanModel m = tiny();
  const Cluster c = toy_cluster();  // 2 devices per node
  Layout l;
  l.ep = 4;  // 2 nodes of 2
  // 10 tokens, K=2 copies, row 8*2 bytes: off-node (4-2)/4, same node other device 1/4
  A2aBytes b = a2a_bytes(m, c, l, 10, 2);
  EXPECT_DOUBLE_EQ(b.inter, 160.0);  // 10*2*0.5*16
  EXPECT_DOUBLE_EQ(b.intra, 80.0);   // 10*2*0.25*16
  // Node-limited: 2 groups, 1 per token -> at most 1 node; expected nodes min(1.5, 1) = 1,
  // remote share 1/2, sent once: 10*0.5*16; forwarded inside: 10*2*(1/2)*16
  m.cfg.n_group = 2, m.cfg.topk_group = 1;
  l.node_limited = true;
  b = a2a_bytes(m, c, l, 10, 2);
  EXPECT_DOUBLE_EQ(b.inter, 80.0);
  EXPECT_DOUBLE_EQ(b.intra, 160.0);
  // time = max(80/10, 160/100) + inter latency (0)
  EXPECT_DOUBLE_EQ(a2a_time(c, b, true), 8.0);
}

TEST(PlanFormulas, MemoryPerDevice) {
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();
  Job job;
  job.devices = 2, job.global_batch = 4, job.seq = 6;
  Layout l = parse_layout("tp=1,pp=1,ep=2,mb=1,zero=1,dtype=bf16");
  ASSERT_TRUE(complete_layout(m, c, job, l, nullptr));
  EXPECT_EQ(l.dp, 2);
  EXPECT_EQ(l.num_micro, 2);  // 4 / (2*1)
  const Memory mem = memory_per_device(m, c, job, l);
  EXPECT_DOUBLE_EQ(mem.params_nonexpert, 1440.0);  // all non-expert (pp = 1, tp = 1)
  EXPECT_DOUBLE_EQ(mem.params_expert, 384.0);      // 2 layers * 4/2 experts * 96
  // non-expert ZeRO-1 over dp=2: 2 + 4 + 6; expert over edp=1: 2 + 4 + 12
  EXPECT_DOUBLE_EQ(mem.weights, 2 * 1824.0);
  EXPECT_DOUBLE_EQ(mem.grads, 4 * 1824.0);
  EXPECT_DOUBLE_EQ(mem.optimizer, 6 * 1440.0 + 12 * 384.0);
  EXPECT_DOUBLE_EQ(mem.activations, 6 * (2 * 272.0 + 216.0));  // 6 tokens, 1 in flight
  EXPECT_DOUBLE_EQ(mem.dispatch_buffers, 2 * 6 * 2 * 8 * 2.0);
  EXPECT_DOUBLE_EQ(mem.logits, 6 * 10 * 4.0);
  EXPECT_DOUBLE_EQ(mem.total, 3648 + 7296 + 13248 + 4560 + 384 + 240.0);
}

TEST(PlanFormulas, StepTimeOneDevice) {
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();
  Job job;
  job.devices = 1, job.global_batch = 2, job.seq = 6;
  Layout l = parse_layout("mb=1,zero=1,dtype=bf16");
  ASSERT_TRUE(complete_layout(m, c, job, l, nullptr));
  const Time t = step_time(m, c, job, l);
  // 6 tokens per micro-batch: dense 6*2304/(1000*0.5), experts 6*768/(1000*0.25),
  // head 6*288/500, attention 6*288/500, elementwise 6*(2*376 + 304 + 2*10*4)/1e6
  EXPECT_DOUBLE_EQ(t.fwd_dense, 27.648);
  EXPECT_DOUBLE_EQ(t.fwd_expert, 18.432);
  EXPECT_DOUBLE_EQ(t.fwd_head, 3.456);
  EXPECT_DOUBLE_EQ(t.fwd_attn, 3.456);
  EXPECT_NEAR(t.fwd_mem, 0.006816, 1e-12);
  EXPECT_NEAR(t.bwd_weight, 49.536, 1e-9);                // = forward GEMMs
  EXPECT_NEAR(t.bwd_input, 49.536 + 2 * 3.462816, 1e-9);  // + 2x attention and elementwise
  EXPECT_NEAR(t.compute, 2 * (52.998816 + 105.997632), 1e-9);
  EXPECT_DOUBLE_EQ(t.bubble, 0.0);
  EXPECT_DOUBLE_EQ(t.exposed_comm, 0.0);
  EXPECT_NEAR(t.optimizer, 2208 * 30 / 1e6, 1e-12);  // all parameters, 30 bytes each
  EXPECT_NEAR(t.step, 318.059136, 1e-9);
  EXPECT_NEAR(t.tokens_per_s_per_device, 12 / 318.059136, 1e-12);
}

// With a grouped-GEMM curve the experts run at the efficiency for the rows each gets: 6 tokens x
// top-2 over 4 experts = 3 rows (one device, ep 1), then 4 experts -> 8 halve the rows.
TEST(PlanFormulas, ExpertTimeFollowsTheCurveAtTheRowsPerExpert) {
  PlanModel m = tiny();
  Cluster c = toy_cluster();
  c.eff.grouped_gemm_rows = {1.5, 3, 6};
  c.eff.grouped_gemm_curve = {0.1, 0.2, 0.4};
  Job job;
  job.devices = 1, job.global_batch = 2, job.seq = 6;
  Layout l = parse_layout("mb=1,zero=1,dtype=bf16");
  ASSERT_TRUE(complete_layout(m, c, job, l, nullptr));
  const Time t4 = step_time(m, c, job, l);
  EXPECT_DOUBLE_EQ(t4.fwd_expert, 6 * 768 / (1000 * 0.2));  // 3 rows: 0.2
  m.cfg.n_routed_experts = 8;  // same active FLOPs, 1.5 rows each
  Layout l8 = parse_layout("mb=1,zero=1,dtype=bf16");
  ASSERT_TRUE(complete_layout(m, c, job, l8, nullptr));
  const Time t8 = step_time(m, c, job, l8);
  EXPECT_DOUBLE_EQ(t8.fwd_expert, 6 * 768 / (1000 * 0.1));
  EXPECT_DOUBLE_EQ(t8.fwd_dense, t4.fwd_dense);
}

TEST(PlanFormulas, DataParallelOverlap) {
  const PlanModel m = tiny();
  Cluster c = toy_cluster();
  Job job;
  job.devices = 2, job.global_batch = 2, job.seq = 6;
  Layout l = parse_layout("mb=1,zero=1,ep=1");
  ASSERT_TRUE(complete_layout(m, c, job, l, nullptr));  // dp = 2 inside one node
  const Time t = step_time(m, c, job, l);
  // non-expert 1440 and expert 768 params, dp = edp = 2 over 100 B/s: each of RS and AG
  // moves 1/2 * 2208 * 2 bytes / 100 = 22.08 s; backward ~106 s hides the RS, the forward
  // ~53 s hides the AG
  EXPECT_NEAR(t.dp_comm, 2 * 22.08, 1e-9);
  EXPECT_DOUBLE_EQ(t.dp_exposed, 0.0);
  c.intra_bandwidth = 0.1;  // 1000x slower: 22080 s each, minus what the overlap hides
  const Time s = step_time(m, c, job, l);
  EXPECT_NEAR(s.dp_exposed, (22080 - s.bwd) + (22080 - s.fwd), 1e-6);
}

TEST(PlanFormulas, DualPipeHidesAllToAll) {
  PlanModel m = tiny();
  Cluster c = toy_cluster();
  Job job;
  job.devices = 4, job.global_batch = 8, job.seq = 6;
  Layout a = parse_layout("pp=2,ep=2,mb=1,sched=1f1b");
  Layout b = parse_layout("pp=2,ep=2,mb=1,sched=dualpipe");
  ASSERT_TRUE(complete_layout(m, c, job, a, nullptr));
  ASSERT_TRUE(complete_layout(m, c, job, b, nullptr));
  const Time ta = step_time(m, c, job, a), tb = step_time(m, c, job, b);
  EXPECT_GT(ta.a2a, 0.0);
  EXPECT_DOUBLE_EQ(ta.a2a_exposed, ta.a2a);  // 1F1B: nothing overlaps it
  EXPECT_DOUBLE_EQ(tb.a2a, ta.a2a);          // same traffic
  EXPECT_DOUBLE_EQ(tb.a2a_exposed, std::max(0.0, tb.a2a - (tb.fwd + tb.bwd + tb.recompute)));
  EXPECT_LT(tb.a2a_exposed, ta.a2a_exposed);
}

TEST(PlanFormulas, LayoutParsingAndChecks) {
  const Layout l = parse_layout(
      "tp=2,pp=4,vpp=2,ep=8,mb=2,sched=interleaved,recompute=full,"
      "zero=2,dtype=fp8,nodelimit=1");
  EXPECT_EQ(l.tp, 2);
  EXPECT_EQ(l.vpp, 2);
  EXPECT_EQ(l.schedule, Schedule::kInterleaved);
  EXPECT_EQ(l.recompute, Recompute::kFull);
  EXPECT_EQ(l.dtype, Dtype::kFp8);
  EXPECT_TRUE(l.node_limited);
  EXPECT_THROW(parse_layout("tp=x"), Error);
  EXPECT_THROW(parse_layout("sched=gpipe"), Error);
  const PlanModel m = tiny();
  const Cluster c = toy_cluster();
  Job job;
  job.devices = 4, job.global_batch = 8, job.seq = 6;
  Layout bad = parse_layout("ep=3");
  std::string why;
  EXPECT_FALSE(complete_layout(m, c, job, bad, &why));
  EXPECT_NE(why.find("ep"), std::string::npos);
  Layout big_tp = parse_layout("tp=4");  // larger than a 2-device node
  EXPECT_FALSE(complete_layout(m, c, job, big_tp, &why));
}

TEST(PlanSearch, SlowNetworkKeepsExpertParallelInsideNodes) {
  PlanModel m = tiny();
  m.cfg.n_routed_experts = 16;
  m.cfg.hidden_size = 64;
  m.cfg.num_attention_heads = 8;
  m.cfg.num_key_value_heads = 8;
  m.cfg.head_dim = 8;
  Cluster c = toy_cluster();
  c.devices_per_node = 4;
  c.peak_bf16 = 1e12;
  c.memory_bandwidth = 1e11;
  c.intra_bandwidth = 1e10;
  c.inter_bandwidth = 1e10;
  Job job;
  job.devices = 16, job.global_batch = 64, job.seq = 64;
  SearchOptions o;
  const SearchResult fast = search(m, c, job, o);
  ASSERT_FALSE(fast.top.empty());
  for (const auto& x : fast.top) EXPECT_TRUE(x.memory.fits());
  for (size_t i = 1; i < fast.top.size(); ++i)
    EXPECT_LE(fast.top[i - 1].time.step, fast.top[i].time.step);
  const Cluster slow = scale_inter_bandwidth(c, 1e-4);
  const SearchResult r = search(m, slow, job, o);
  ASSERT_FALSE(r.top.empty());
  EXPECT_EQ(nodes_spanned(r.top.front().layout.ep, 1, slow.devices_per_node), 1)
      << r.top.front().layout.str();
  EXPECT_GE(r.top.front().time.step, fast.top.front().time.step);
}

}  // namespace
}  // namespace moe::plan
