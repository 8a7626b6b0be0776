// Dissemination barrier (Hensgen, Finkel & Manber 1988).
//
// In round k rank r signals rank r + 2^k and waits for rank r - 2^k. After ceil(log2 n) rounds
// every rank has heard, directly or through others, from every rank, so none leaves before all
// arrived. Works for any n, with empty messages.
#include "comm/algorithms/algorithms.h"

namespace moe::comm {

void dissemination_barrier(OpContext& c) {
  const int n = c.size(), r = c.rank();
  uint32_t round = 0;
  for (int k = 1; k < n; k <<= 1, ++round) {
    Handle s = c.send((r + k) % n, nullptr, 0, round);
    Handle q = c.recv((r - k + n) % n, nullptr, 0, round);
    c.wait(q);
    c.wait(s);
  }
}

}  // namespace moe::comm
