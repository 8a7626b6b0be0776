// Pairwise-exchange all_to_allv (MPICH's long-message all-to-all).
//
// In step i (1..n-1) rank r sends its block for rank r+i and receives the block from rank r-i,
// so at each step every rank has exactly one partner in each direction and no link carries
// two streams. Receives are all posted first (their destinations are disjoint), sends follow
// in step order, then the block to itself; the transport's per-peer queues let the steps
// overlap.
#include <cstring>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

void pairwise_all_to_allv(OpContext& c, const void* in, const size_t* send_counts,
                          const size_t* send_displs, void* out, const size_t* recv_counts,
                          const size_t* recv_displs) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  check_self_block(r, send_counts, recv_counts);
  std::vector<Handle> hs;
  for (int i = 1; i < n; ++i) {
    const int from = (r - i + n) % n;
    hs.push_back(c.recv(from, dst + recv_displs[from] * es, recv_counts[from] * es, 0));
  }
  for (int i = 1; i < n; ++i) {
    const int to = (r + i) % n;
    hs.push_back(c.send(to, src + send_displs[to] * es, send_counts[to] * es, 0));
  }
  // Our own block last: the peers copy theirs (single copy over shared memory reads our
  // buffer from their side) while we copy ours.
  copy_block(dst + recv_displs[r] * es, src + send_displs[r] * es, send_counts[r] * es);
  c.wait_all(hs);
}

}  // namespace moe::comm
