// Every algorithm of the library, one per file in this folder. Counts are in elements of the
// context's dtype; buffers are this rank's. Each builds its plan (who sends what to whom, in
// which step) and then runs it.
#pragma once

#include <cstddef>

#include "comm/algorithms/op_context.h"

namespace moe::comm {

enum class Algo : uint8_t { kAuto = 0, kRing = 1, kHalvingDoubling = 2, kBinomial = 3,
                            kPairwise = 4, kDissemination = 5 };
const char* algo_name(Algo a);
Algo parse_algo(const std::string& s);  // "ring", "rhd", "auto", ...

// ring.cpp
void ring_all_reduce(OpContext& c, const void* in, void* out, size_t count, size_t piece_bytes);
void ring_reduce_scatter(OpContext& c, const void* in, void* out, size_t recv_count,
                         size_t piece_bytes);
void ring_all_gather(OpContext& c, const void* in, void* out, size_t send_count,
                     size_t piece_bytes);
// halving_doubling.cpp
void halving_doubling_all_reduce(OpContext& c, const void* in, void* out, size_t count);
// binomial_broadcast.cpp
void binomial_broadcast(OpContext& c, void* buf, size_t count, int root);
// pairwise_all_to_all.cpp: counts and displacements in elements, one per rank.
void pairwise_all_to_allv(OpContext& c, const void* in, const size_t* send_counts,
                          const size_t* send_displs, void* out, const size_t* recv_counts,
                          const size_t* recv_displs);
// dissemination_barrier.cpp
void dissemination_barrier(OpContext& c);

}  // namespace moe::comm
