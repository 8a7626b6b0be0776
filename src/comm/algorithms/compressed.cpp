// Compressed collectives: f32 values cross the links encoded (bf16, FP8 E4M3 or INT8 with a
// scale per 128 values; compression.h) and are decoded, and reduced in f32, where they land.
//
// reduce_scatter is direct: rank r encodes block i of its input for rank i (i != r) and sends
// it there; rank i decodes the n-1 blocks it gets and sums them with its own block, which
// never leaves it and is not rounded. Every rank sends (n-1)/n of the buffer, as the ring
// does, but each value is encoded once: re-encoding partial sums at every hop of a ring would
// add n-1 roundings, and error feedback could not see them. The sum runs in rank order, so
// the same inputs give the same bits on every run.
//
// Across hosts with several ranks each (the same number L on each of H hosts) it is two-level,
// so what crosses the network is encoded once per pair of hosts, not once per pair of ranks:
//   1. inside each host, exactly (f32 over shared memory): local rank l gets the host's sum of
//      the H blocks that belong to the ranks with local index l on every host;
//   2. across hosts, among the ranks with the same local index: each sends the encoded host
//      sum of the block of its peer on host h there (error feedback applies to these), and
//      adds the H-1 decoded sums it gets to its own host's, in host order.
// Each rank then sends (H-1) encoded blocks off its host instead of (n - L) of them (2 hosts
// x 2 ranks: half), and rounding happens once per host instead of once per rank.
//
// all_reduce = that reduce_scatter over n near-equal segments, then each rank encodes its
// reduced segment once and sends it to all; every rank, the segment's owner too, decodes the
// same bytes, so all ranks end with identical values.
//
// all_to_allv encodes each rank's block on its own (scales never straddle two ranks' rows)
// and keeps the block to itself exact.
#include <cstring>
#include <vector>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

namespace {

// Sums, in rank order, this rank's own f32 block (own) and the decoded blocks of the others.
void sum_in_rank_order(int n, int r, Wire w, const float* own, const char* recv,
                       const std::vector<size_t>& recv_displs, size_t count, float* out) {
  for (int j = 0; j < n; ++j) {
    if (j == r) {
      if (j == 0) std::memcpy(out, own, 4 * count);
      else for (size_t i = 0; i < count; ++i) out[i] += own[i];
    } else {
      wire_decode(w, recv + recv_displs[j], count, out, /*add=*/j > 0);
    }
  }
}

}  // namespace

namespace {

// The hosts of a context as lists of its ranks (hosts in order of their first rank), if every
// host has the same number of ranks; else empty.
std::vector<std::vector<int>> uniform_hosts(const OpContext& c) {
  std::vector<std::vector<int>> hosts;
  std::vector<int> seen;
  for (int q = 0; q < c.size(); ++q) {
    const int h = c.host_of()[q];
    if (size_t(h) >= seen.size()) seen.resize(size_t(h) + 1, -1);
    if (seen[h] < 0) seen[h] = int(hosts.size()), hosts.emplace_back();
    hosts[seen[h]].push_back(q);
  }
  for (const auto& h : hosts)
    if (h.size() != hosts[0].size()) return {};
  return hosts;
}

// Segment i = [seg[i], seg[i+1]) of every rank's input goes to rank i, encoded (with the
// residual); rank r sums its own segment, exact, with the n-1 decoded ones, in rank order.
void direct_reduce(OpContext& c, const float* in, const std::vector<size_t>& seg, float* out,
                   const Compression& z) {
  const int n = c.size(), r = c.rank();
  const size_t mine = seg[r + 1] - seg[r];
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  size_t st = 0, rt = 0;
  for (int i = 0; i < n; ++i) {
    sc[i] = i == r ? 0 : wire_bytes(z.wire, seg[i + 1] - seg[i]);
    rc[i] = i == r ? 0 : wire_bytes(z.wire, mine);
    sd[i] = st, rd[i] = rt;
    st += sc[i], rt += rc[i];
  }
  char* send = c.scratch(st);
  char* recv = c.scratch(rt);
  float* own = reinterpret_cast<float*>(c.scratch(4 * mine));
  for (int i = 0; i < n; ++i) {
    const size_t at = seg[i], len = seg[i + 1] - seg[i];
    float* res = z.residual ? z.residual + at : nullptr;
    if (i != r) {
      wire_encode(z.wire, in + at, len, send + sd[i], res);
      continue;
    }
    for (size_t k = 0; k < len; ++k) {  // not encoded: its residual is spent here
      own[k] = res ? in[at + k] + res[k] : in[at + k];
      if (res) res[k] = 0;
    }
  }
  pairwise_all_to_allv(c, send, sc.data(), sd.data(), recv, rc.data(), rd.data());
  sum_in_rank_order(n, r, z.wire, own, recv, rd, mine, out);
}

void two_level_reduce_scatter(OpContext& c, const std::vector<std::vector<int>>& hosts,
                              const float* in, float* out, size_t rc, const Compression& z) {
  const int r = c.rank(), H = int(hosts.size()), L = int(hosts[0].size());
  int me = 0, l = 0;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < L; ++i)
      if (hosts[h][i] == r) me = h, l = i;
  // 1. Inside the host: local rank i gets, for every host h, block hosts[h][i] (f32 bytes).
  const size_t part = size_t(H) * rc * 4;  // H blocks of f32
  char* send = c.scratch(part * L);
  char* recv = c.scratch(part * L);
  std::vector<size_t> sc(L, part), sd(L), rcv(L, part);
  for (int i = 0; i < L; ++i) {
    sd[i] = part * i;
    for (int h = 0; h < H; ++h)
      std::memcpy(send + sd[i] + size_t(h) * rc * 4, in + size_t(hosts[h][i]) * rc, rc * 4);
  }
  OpContext local = c.sub(hosts[me], 1);
  pairwise_all_to_allv(local, send, sc.data(), sd.data(), recv, rcv.data(), sd.data());
  float* sum = reinterpret_cast<float*>(c.scratch(part));  // [H][rc] this host's sums
  for (int i = 0; i < L; ++i) {
    const float* p = reinterpret_cast<const float*>(recv + sd[i]);
    if (i == 0) std::memcpy(sum, p, part);
    else for (size_t k = 0; k < size_t(H) * rc; ++k) sum[k] += p[k];
  }
  // 2. Across hosts, among the ranks with local index l: host sums, encoded.
  std::vector<int> peers(H);
  for (int h = 0; h < H; ++h) peers[h] = hosts[h][l];
  const size_t wb = wire_bytes(z.wire, rc);
  char* esend = c.scratch(wb * H);
  char* erecv = c.scratch(wb * H);
  std::vector<size_t> ec(H, wb), ed(H);
  for (int h = 0; h < H; ++h) ed[h] = wb * h;
  ec[me] = 0;
  for (int h = 0; h < H; ++h) {
    float* res = z.residual ? z.residual + size_t(peers[h]) * rc : nullptr;
    if (h != me) {
      wire_encode(z.wire, sum + size_t(h) * rc, rc, esend + ed[h], res);
    } else if (res) {  // the own host's sum is not encoded: its residual is spent here
      for (size_t k = 0; k < rc; ++k) sum[size_t(h) * rc + k] += res[k], res[k] = 0;
    }
  }
  OpContext cross = c.sub(peers, 2);
  pairwise_all_to_allv(cross, esend, ec.data(), ed.data(), erecv, ec.data(), ed.data());
  sum_in_rank_order(H, me, z.wire, sum + size_t(me) * rc, erecv, ed, rc, out);
}

}  // namespace

void compressed_reduce_scatter(OpContext& c, const float* in, float* out, size_t recv_count,
                               const Compression& z) {
  const int n = c.size();
  const std::vector<std::vector<int>> hosts = uniform_hosts(c);
  if (hosts.size() > 1 && hosts[0].size() > 1)
    return two_level_reduce_scatter(c, hosts, in, out, recv_count, z);
  std::vector<size_t> seg(n + 1);
  for (int i = 0; i <= n; ++i) seg[i] = recv_count * size_t(i);
  direct_reduce(c, in, seg, out, z);
}

void compressed_all_reduce(OpContext& c, const float* in, float* out, size_t count, ReduceOp op,
                           const Compression& z) {
  const int n = c.size(), r = c.rank();
  std::vector<size_t> seg(n + 1);
  for (int i = 0; i <= n; ++i) seg[i] = segment_begin(count, n, i);
  const size_t mine = seg[r + 1] - seg[r];
  // Phase 1: segment i of every rank's input, encoded, to rank i, which sums them.
  float* sum = reinterpret_cast<float*>(c.scratch(4 * mine));
  direct_reduce(c, in, seg, sum, z);
  if (op == ReduceOp::kAvg)
    for (size_t k = 0; k < mine; ++k) sum[k] /= float(n);
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  // Phase 2: each reduced segment, encoded once, to every rank (itself included).
  const size_t wb_mine = wire_bytes(z.wire, mine);
  char* enc = c.scratch(wb_mine);
  wire_encode(z.wire, sum, mine, enc);
  size_t total = 0;
  for (int i = 0; i < n; ++i) {
    sc[i] = wb_mine, sd[i] = 0;
    rc[i] = wire_bytes(z.wire, seg[i + 1] - seg[i]);
    rd[i] = total;
    total += rc[i];
  }
  char* all = c.scratch(total);
  OpContext gather = c.sub([n] {
    std::vector<int> v(n);
    for (int i = 0; i < n; ++i) v[i] = i;
    return v;
  }(), 1);
  pairwise_all_to_allv(gather, enc, sc.data(), sd.data(), all, rc.data(), rd.data());
  for (int i = 0; i < n; ++i) wire_decode(z.wire, all + rd[i], seg[i + 1] - seg[i], out + seg[i]);
}

void compressed_all_to_allv(OpContext& c, const float* in, const size_t* send_counts,
                            const size_t* send_displs, float* out, const size_t* recv_counts,
                            const size_t* recv_displs, Wire w, bool two_level) {
  const int n = c.size(), r = c.rank();
  check_self_block(r, send_counts, recv_counts);
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  size_t st = 0, rt = 0;
  for (int i = 0; i < n; ++i) {
    sc[i] = i == r ? 0 : wire_bytes(w, send_counts[i]);
    rc[i] = i == r ? 0 : wire_bytes(w, recv_counts[i]);
    sd[i] = st, rd[i] = rt;
    st += sc[i], rt += rc[i];
  }
  char* send = c.scratch(st);
  char* recv = c.scratch(rt);
  for (int i = 0; i < n; ++i)
    if (i != r) wire_encode(w, in + send_displs[i], send_counts[i], send + sd[i]);
  if (two_level)
    two_level_all_to_allv(c, send, sc.data(), sd.data(), recv, rc.data(), rd.data());
  else
    pairwise_all_to_allv(c, send, sc.data(), sd.data(), recv, rc.data(), rd.data());
  if (send_counts[r])
    copy_block(out + recv_displs[r], in + send_displs[r], 4 * send_counts[r]);
  for (int i = 0; i < n; ++i)
    if (i != r) wire_decode(w, recv + rd[i], recv_counts[i], out + recv_displs[i]);
}

}  // namespace moe::comm
