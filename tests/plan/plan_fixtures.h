// The tiny model and toy cluster the formula tests work out by hand:
//   V=10, D=8, L=3 (layer 0 dense, layers 1-2 MoE), H=2, Hkv=1, Dh=4, F=16, Fe=4, E=4, S=1,
//   K=2, untied head: 2208 parameters, 1440 non-expert and 768 in routed experts.
//   Device: 1000 FLOP/s, memory 1e6 B/s; 2 devices per node, intra 100 B/s, inter 10 B/s per
//   device, no latency, every communication efficiency 1.
#pragma once

#include "plan/cost.h"

namespace moe::plan::fixtures {

inline PlanModel tiny() {
  PlanModel m;
  auto& c = m.cfg;
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 16;
  c.moe_intermediate_size = 4;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  return m;
}

// A made-up device with round numbers so times are easy to work out.
inline Cluster toy_cluster() {
  Cluster c;
  c.name = "toy";
  c.peak_bf16 = 1000;
  c.peak_fp32 = 1000;
  c.peak_fp8 = 2000;
  c.memory_bytes = 1e9;
  c.memory_bandwidth = 1e6;
  c.devices_per_node = 2;
  c.intra_bandwidth = 100;
  c.inter_bandwidth = 10;
  c.intra_latency = 0;
  c.inter_latency = 0;
  c.eff.gemm = 0.5;
  c.eff.grouped_gemm = 0.25;
  c.eff.attention = 0.5;
  c.eff.memory = 1.0;
  c.eff.intra_comm = 1.0;
  c.eff.inter_comm = 1.0;
  c.eff.overlap_compute_share = 0.0;
  return c;
}

}  // namespace moe::plan::fixtures
