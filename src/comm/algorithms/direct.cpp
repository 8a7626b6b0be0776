// Direct all_reduce: the reduce-scatter and the all-gather in one step each, every rank
// talking to every other at once. Step one is an all-to-all of segments (rank j gets segment
// j of every input and reduces it); step two sends each reduced segment to every other rank.
//
// It moves the same bytes as the ring, (n-1)/n of the data in each direction, but needs two
// synchronisations instead of 2(n-1). That pays on shared memory with single copy, where every
// message is one copy and steps cost more than bytes (with 4 ranks on 2 cores each ring step
// waits for a context switch). Across hosts it would put n-1 flows on every link at once, so
// the communicator picks it only for ranks on one host. Each segment is reduced by its owner
// alone and then copied, so all ranks end bitwise equal.
#include <algorithm>
#include <vector>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

void direct_all_reduce(OpContext& c, const void* in, void* out, size_t count) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem();
  const char* src = static_cast<const char*>(in);
  char* o = static_cast<char*>(out);
  auto off = [&](int i) { return segment_begin(count, n, i); };
  auto len = [&](int i) { return segment_begin(count, n, i + 1) - segment_begin(count, n, i); };
  size_t max_seg = 0;
  for (int i = 0; i < n; ++i) max_seg = std::max(max_seg, len(i));
  const size_t mine = len(r);
  // Rank r - i's contribution to our segment lands in slot i - 1.
  char* slots = c.scratch(std::max<size_t>(1, size_t(n - 1) * max_seg * es));
  auto slot = [&](int i) { return slots + size_t(i - 1) * max_seg * es; };

  std::vector<Handle> recvs, sends;
  for (int i = 1; i < n; ++i) {
    const int to = (r + i) % n;
    sends.push_back(c.send(to, src + off(to) * es, len(to) * es, 0));
  }
  // Our segment: our own contribution first, then rank r-1's, r-2's, ... (a fixed order per
  // segment; in place, `acc` is our own contribution and is only ever read before written).
  // Each receive is posted once the one before is reduced, since the transport may reduce
  // as the data comes (from a mapped buffer); the senders' offers are already here.
  char* acc = o + off(r) * es;
  const char* own = src + off(r) * es;
  for (int i = 1; i < n; ++i)
    c.wait_reduce(c.recv_reduce((r - i + n) % n, slot(i), acc, i == 1 ? own : acc, mine, 0));
  // In place the sends above read segments of `out` that the all-gather overwrites.
  c.wait_all(sends);

  for (int i = 1; i < n; ++i) {
    const int from = (r - i + n) % n;
    recvs.push_back(c.recv(from, o + off(from) * es, len(from) * es, 1));
  }
  for (int i = 1; i < n; ++i) sends.push_back(c.send((r + i) % n, acc, mine * es, 1));
  c.wait_all(recvs);
  c.wait_all(sends);
}

}  // namespace moe::comm
