// Communication formulas of the cost model: collectives over groups of devices that fill nodes
// in rank order, and the expert-parallel all-to-all. Each returns the time and the bytes one
// device sends, split into inter-node (its NIC share) and intra-node traffic.
//
// The cluster's inter_bandwidth is one device's share of its node's NIC(s) per direction
// (cluster.h). A node's devices send concurrently, so a device that sends X bytes off-node
// takes X / inter_bandwidth; a collective whose traffic leaves a node through fewer devices
// than the group has there (a ring crosses each node boundary once) gets the NIC shares of
// all of the group's members on that node.
#pragma once

#include <cstdint>

#include "plan/layout.h"

namespace moe::plan {

// Ring all-gather or reduce-scatter of a `bytes` buffer over n ranks on one level: each rank
// moves (n-1)/n of it, in n-1 latency-bound steps (Thakur, Rabenseifner & Gropp 2005; the busbw
// factor of nccl-tests). All-reduce = reduce-scatter + all-gather = 2x.
double ring_time(double bytes, int64_t n, double bandwidth, double latency);
// Distinct nodes covered by a group of `size` ranks spaced `stride` apart, ranks filling
// nodes of `per_node` devices in order.
int64_t nodes_spanned(int64_t size, int64_t stride, int64_t per_node);
// Expected distinct nodes hit by k uniform picks among g nodes: g * (1 - (1 - 1/g)^k).
double expected_nodes_touched(int64_t k, int64_t g);

// Where a communication group sits: n ranks spaced `stride` apart over `nodes` nodes,
// per_node = n / nodes of them on each (on average; `even` if every node holds as many).
struct GroupSpan {
  int64_t n = 1, nodes = 1;
  double per_node = 1;
  bool even = true;
};
GroupSpan group_span(int64_t n, int64_t stride, int64_t devices_per_node);

struct CommCost {
  double time = 0;         // seconds
  double inter_bytes = 0;  // bytes one device sends off its node (the group's average)
  double intra_bytes = 0;  // bytes one device sends to devices of its own node
};

// Ring reduce-scatter or all-gather of S bytes (moe::comm's ring, NCCL's rings): every ring
// edge carries (n-1)/n * S. Ranks fill nodes in order, so the ring leaves each node once; that
// edge gets the NIC shares of the r = per_node group members on the node:
//   time  = (n-1)/n * S / min(intra_bw * eff_intra, r * inter_bw * eff_inter) + (n-1) * latency
//   inter = (n-1)/n * S / r per device,  intra = (n-1)/n * S * (r-1)/r per device
// (one node: time = (n-1)/n * S / (intra_bw * eff_intra) + (n-1) * intra latency).
CommCost ring_collective(const Cluster& c, double bytes, const GroupSpan& g);

// Direct-exchange reduce-scatter of S (encoded) bytes, the trainer's compressed gradient path:
// rank i sends block j (S/n) to rank j and sums what it receives in fp32. Per device
//   inter = (n - r)/n * S,  intra = (r - 1)/n * S,
//   time  = max(inter / (inter_bw * eff_inter), intra / (intra_bw * eff_intra)) + one latency.
// Same total volume as the ring, but every block for another node crosses on its own, so a
// node sends r * (n - r)/n * S off-node against the ring's (n-1)/n * S.
CommCost direct_exchange(const Cluster& c, double bytes, const GroupSpan& g);

// The trainer's compressed reduce-scatter of V f32 values encoded at w bytes a value (bf16 2,
// int8 1 + 4/128; comm/algorithms/compressed.cpp). On H > 1 nodes holding the same number
// L > 1 of the group's ranks each (n = H * L) it is two-level, blocks b = V/n values:
//   1. inside the node, exact f32: each rank sends each of its L-1 node peers H blocks,
//      intra = (L-1) * H * b * 4 = (L-1)/L * 4V bytes;
//   2. across nodes, among the ranks with the same local index: each rank sends H-1 encoded
//      host sums, inter = (H-1) * w * b = (H-1)/n * wV bytes (the flat exchange: (n-L)/n * wV,
//      L times as much);
//   time = intra / (intra_bw * eff_intra) + intra latency
//        + inter / (inter_bw * eff_inter) + inter latency   (stage 2 waits for stage 1's sums).
// One rank per node, uneven nodes or one node: direct_exchange(c, w * V, g).
CommCost compressed_reduce_scatter(const Cluster& c, double values, double wire,
                                   const GroupSpan& g);

// ---- Expert-parallel all-to-all -----------------------------------------------------------
struct A2aBytes {
  double intra = 0, inter = 0;  // bytes one device sends per all-to-all
};
// One all-to-all of `tokens` tokens per device, `elem_bytes` per hidden element.
A2aBytes a2a_bytes(const PlanModel& m, const Cluster& c, const Layout& l, double tokens,
                   double elem_bytes);
double a2a_time(const Cluster& c, const A2aBytes& b, bool crosses_nodes);

}  // namespace moe::plan
