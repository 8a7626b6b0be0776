// Every algorithm of the library, one per file in this folder. Counts are in elements of the
// context's dtype; buffers are this rank's. Each builds its plan (who sends what to whom, in
// which step) and then runs it.
#pragma once

#include <cstddef>

#include "comm/algorithms/op_context.h"
#include "comm/compression.h"

namespace moe::comm {

enum class Algo : uint8_t {
  kAuto = 0,
  kRing = 1,
  kHalvingDoubling = 2,
  kBinomial = 3,
  kPairwise = 4,
  kDissemination = 5,
  kHierarchical = 6,
  kTwoLevel = 7,
  kDirect = 8,
  kRecursiveDoubling = 9
};
const char* algo_name(Algo a);
// all_reduce (MOE_COMM_ALGO): "auto", "ring", "rd", "rhd", "hier", "direct".
Algo parse_algo(const std::string& s);
// all_to_all(v) (MOE_COMM_ALGO_A2A): "auto", "pairwise", "two_level".
Algo parse_algo_a2a(const std::string& s);

// ring.cpp
void ring_all_reduce(OpContext& c, const void* in, void* out, size_t count, size_t piece_bytes);
void ring_reduce_scatter(OpContext& c, const void* in, void* out, size_t recv_count,
                         size_t piece_bytes);
void ring_all_gather(OpContext& c, const void* in, void* out, size_t send_count,
                     size_t piece_bytes);
// The two halves of ring_all_reduce, for composing: `count` is cut into c.size() segments as
// ring_all_reduce cuts it. After the first, segment c.rank() of `out` holds the reduction of
// every rank's `in` (other segments of `out` are scratch); the second then fills in the rest.
void ring_reduce_scatter_segments(OpContext& c, const void* in, void* out, size_t count,
                                  size_t piece_bytes);
void ring_all_gather_segments(OpContext& c, void* out, size_t count, size_t piece_bytes);
// Segment i of `count` elements cut into n: [segment_begin(count, n, i), ...(i + 1)).
inline size_t segment_begin(size_t count, int n, int i) { return count * size_t(i) / size_t(n); }
// hierarchical.cpp: reduce within each host, all_reduce across hosts, spread within hosts.
void hierarchical_all_reduce(OpContext& c, const void* in, void* out, size_t count,
                             size_t piece_bytes);
// two_level_all_to_all.cpp: like pairwise_all_to_allv, but what crosses hosts is gathered to
// one rank per host, exchanged between hosts in one message per pair, and scattered there.
void two_level_all_to_allv(OpContext& c, const void* in, const size_t* send_counts,
                           const size_t* send_displs, void* out, const size_t* recv_counts,
                           const size_t* recv_displs);
// direct.cpp: reduce-scatter as one all-to-all of segments, all-gather as one round of sends.
void direct_all_reduce(OpContext& c, const void* in, void* out, size_t count);
// halving_doubling.cpp: recursive halving-doubling, or with `halve` false recursive doubling
// (every step swaps the whole vector: half the steps, for the smallest messages).
void halving_doubling_all_reduce(OpContext& c, const void* in, void* out, size_t count,
                                 bool halve = true);
// binomial_broadcast.cpp
void binomial_broadcast(OpContext& c, void* buf, size_t count, int root);
// all_to_allv's block from a rank to itself must be as long on both sides.
inline void check_self_block(int r, const size_t* send_counts, const size_t* recv_counts) {
  MOE_CHECK(send_counts[r] == recv_counts[r], "comm.all_to_allv", "rank ", r, " sends ",
            send_counts[r], " elements to itself but expects ", recv_counts[r]);
}
// pairwise_all_to_all.cpp: counts and displacements in elements, one per rank.
void pairwise_all_to_allv(OpContext& c, const void* in, const size_t* send_counts,
                          const size_t* send_displs, void* out, const size_t* recv_counts,
                          const size_t* recv_displs);
// dissemination_barrier.cpp
void dissemination_barrier(OpContext& c);
// compressed.cpp: f32 collectives whose values travel in a wire format (compression.h); the
// context's sig.wire is set, so its messages are bytes. `two_level`: all_to_allv's encoded
// blocks go by two_level_all_to_allv instead of pairwise.
void compressed_reduce_scatter(OpContext& c, const float* in, float* out, size_t recv_count,
                               const Compression& z);
void compressed_all_reduce(OpContext& c, const float* in, float* out, size_t count,
                           ReduceOp op, const Compression& z);
void compressed_all_to_allv(OpContext& c, const float* in, const size_t* send_counts,
                            const size_t* send_displs, float* out, const size_t* recv_counts,
                            const size_t* recv_displs, Wire w, bool two_level);

}  // namespace moe::comm
