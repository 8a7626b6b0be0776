// Hierarchical all_reduce (two-level, as in NCCL's intra-node/inter-node split, Horovod's
// hierarchical allreduce, and "rail" stripes of multi-NIC clusters).
//
// Ranks are grouped by host. With S the smallest number of ranks on any host, local rank l < S
// of every host belongs to stripe l; ranks beyond S on a bigger host are "extras", each paired
// with local rank l % S of its host.
//
//   fold:      extras send their whole input to their partner, which adds it to its own (in
//              local-rank order), as halving-doubling folds a non-power-of-two.
//   local reduce-scatter: the first S ranks of each host run the ring's reduce-scatter on the
//              buffer cut into S segments; local rank l then holds segment l summed over the
//              host. Same-host traffic: shared memory.
//   across:    stripe l (local rank l of every host) runs a ring all_reduce on segment l. The
//              slow links carry 2(H-1)/H of one segment per rank, S stripes in parallel,
//              instead of the flat ring's 2(n-1)/n of everything per rank with every one of
//              its 2(n-1) steps waiting on an inter-host hop.
//   local all-gather: the S ranks of each host swap their segments (ring all-gather).
//   unfold:    partners send the result to their extras.
//
// Each segment is reduced in a fixed order by fixed ranks and then copied, so every rank ends
// with bitwise the same result. The communicator chooses this when it spans several hosts,
// some host has more than one rank, and the message is large (MOE_COMM_HIER_MIN).
#include <algorithm>
#include <cstring>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

namespace {

// Tag phases (OpContext::sub): each phase's messages are told apart from the others'.
enum Phase : uint32_t { kFold = 1, kLocalRs = 2, kAcross = 3, kLocalAg = 4, kUnfold = 5 };

struct HierPlan {
  std::vector<std::vector<int>> hosts;  // ranks of each host, ascending
  int stripes = 0;                      // S: ranks per host that hold a segment
  int host = 0, local = 0;              // this rank's host and index there
  std::vector<int> group;               // the first S ranks of this host
  std::vector<int> stripe;              // local rank `local` of every host (if local < S)
  std::vector<int> extras;              // ranks folded into this one
  int partner = -1;                     // for an extra: the rank it folds into
};

HierPlan make_plan(const OpContext& c) {
  HierPlan p;
  const auto& host_of = c.host_of();
  const int nh = *std::max_element(host_of.begin(), host_of.end()) + 1;
  p.hosts.resize(nh);
  for (int r = 0; r < c.size(); ++r) p.hosts[host_of[r]].push_back(r);
  p.hosts.erase(std::remove_if(p.hosts.begin(), p.hosts.end(),
                               [](const std::vector<int>& h) { return h.empty(); }),
                p.hosts.end());
  p.stripes = int(p.hosts[0].size());
  for (auto& h : p.hosts) p.stripes = std::min(p.stripes, int(h.size()));
  for (int h = 0; h < int(p.hosts.size()); ++h) {
    auto it = std::find(p.hosts[h].begin(), p.hosts[h].end(), c.rank());
    if (it == p.hosts[h].end()) continue;
    p.host = h;
    p.local = int(it - p.hosts[h].begin());
  }
  const auto& mine = p.hosts[p.host];
  p.group.assign(mine.begin(), mine.begin() + p.stripes);
  if (p.local >= p.stripes) {
    p.partner = mine[p.local % p.stripes];
  } else {
    for (auto& h : p.hosts) p.stripe.push_back(h[p.local]);
    for (int e = p.local + p.stripes; e < int(mine.size()); e += p.stripes)
      p.extras.push_back(mine[e]);
  }
  return p;
}

}  // namespace

void hierarchical_all_reduce(OpContext& c, const void* in, void* out, size_t count,
                             size_t piece_bytes) {
  const HierPlan p = make_plan(c);
  const size_t es = c.elem(), bytes = count * es;
  char* o = static_cast<char*>(out);

  if (p.partner >= 0) {  // an extra: hand everything to the partner, get the result back
    OpContext fold = c.sub({c.rank(), p.partner}, kFold);
    OpContext unfold = c.sub({c.rank(), p.partner}, kUnfold);
    Handle q = unfold.recv(1, o, bytes, 0);
    Handle s = fold.send(1, in, bytes, 0);
    fold.wait(s);
    unfold.wait(q);
    return;
  }

  // Fold: this rank's input plus its extras', in local-rank order.
  const char* src = static_cast<const char*>(in);
  if (!p.extras.empty()) {
    std::vector<int> members{c.rank()};
    members.insert(members.end(), p.extras.begin(), p.extras.end());
    OpContext fold = c.sub(members, kFold);
    std::vector<Handle> recvs;
    std::vector<char*> bufs;
    for (size_t e = 0; e < p.extras.size(); ++e) {
      bufs.push_back(c.scratch(bytes));
      recvs.push_back(fold.recv(int(e) + 1, bufs.back(), bytes, 0));
    }
    for (size_t e = 0; e < p.extras.size(); ++e) {
      fold.wait(recvs[e]);
      c.reduce(o, e == 0 ? src : o, bufs[e], count);
    }
    src = o;
  }

  // Local reduce-scatter into S segments.
  OpContext local = c.sub(p.group, kLocalRs);
  if (p.stripes > 1)
    ring_reduce_scatter_segments(local, src, o, count, piece_bytes);
  else if (src != o && bytes)
    std::memcpy(o, src, bytes);

  // All-reduce of this rank's segment with its stripe on the other hosts.
  if (p.stripe.size() > 1) {
    OpContext across = c.sub(p.stripe, kAcross);
    const size_t lo = segment_begin(count, p.stripes, p.local);
    const size_t hi = segment_begin(count, p.stripes, p.local + 1);
    ring_all_reduce(across, o + lo * es, o + lo * es, hi - lo, piece_bytes);
  }

  // Local all-gather of the S segments, then the extras get the result.
  if (p.stripes > 1) {
    OpContext gather = c.sub(p.group, kLocalAg);
    ring_all_gather_segments(gather, o, count, piece_bytes);
  }
  if (!p.extras.empty()) {
    std::vector<int> members{c.rank()};
    members.insert(members.end(), p.extras.begin(), p.extras.end());
    OpContext unfold = c.sub(members, kUnfold);
    std::vector<Handle> sends;
    for (size_t e = 0; e < p.extras.size(); ++e)
      sends.push_back(unfold.send(int(e) + 1, o, bytes, 0));
    unfold.wait_all(sends);
  }
}

}  // namespace moe::comm
