// Binomial-tree broadcast (MPICH's short-message broadcast).
//
// Ranks are renumbered so the root is virtual rank 0. In round k (mask = 2^k) every virtual
// rank below mask already has the data and sends it to vrank + mask; after ceil(log2 n) rounds
// everyone has it. Large messages are cut into pieces and each piece is forwarded as soon as
// it arrives, so the tree works as a pipeline instead of store-and-forward.
#include <algorithm>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

void binomial_broadcast(OpContext& c, void* buf, size_t count, int root) {
  const int n = c.size();
  const int vr = (c.rank() - root + n) % n;
  const size_t es = c.elem();
  const size_t bytes = count * es;
  // Plan: the parent we receive from (-1 for the root) and the children we send to.
  int parent = -1;
  std::vector<int> children;
  for (int mask = 1; mask < n; mask <<= 1) {
    if (vr < mask) {
      if (vr + mask < n) children.push_back((vr + mask + root) % n);
    } else if (vr < 2 * mask) {
      parent = (vr - mask + root) % n;
    }
  }
  const size_t piece = std::max<size_t>(es, (256u << 10) / es * es);
  const size_t pieces = std::max<size_t>(1, (bytes + piece - 1) / piece);
  char* b = static_cast<char*>(buf);
  std::vector<Handle> recvs, sends;
  if (parent >= 0)
    for (size_t k = 0; k < pieces; ++k)
      recvs.push_back(c.recv(parent, b + k * piece, std::min(piece, bytes - std::min(bytes, k * piece)),
                             uint32_t(k)));
  for (size_t k = 0; k < pieces; ++k) {
    if (parent >= 0) c.wait(recvs[k]);
    const size_t len = std::min(piece, bytes - std::min(bytes, k * piece));
    for (int ch : children) sends.push_back(c.send(ch, b + k * piece, len, uint32_t(k)));
  }
  c.wait_all(sends);
}

}  // namespace moe::comm
