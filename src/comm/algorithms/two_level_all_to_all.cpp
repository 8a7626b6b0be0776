// Host-aggregated two-level all_to_allv (as in hierarchical MPI_Alltoallv and DeepEP's
// node-level dispatch: cross the slow network once per pair of hosts, not once per pair of
// ranks).
//
// Ranks are grouped by host; the lowest rank of each host is its leader.
//
//   local:    blocks between ranks of the same host go directly (shared memory).
//   gather:   every other rank sends its leader its counts (one per rank) and, packed in one
//             message, every block bound for another host, ordered by (host, rank).
//   exchange: leader A sends leader B the counts of A's ranks to B's ranks, and one message
//             per rank of A holding that rank's blocks for B (sliced out of what it gathered,
//             no copy). With H hosts that is H-1 exchanges per leader instead of the flat
//             algorithm's (ranks per host)^2 messages per pair of hosts.
//   scatter:  leader B packs, for each rank d of its host, every block bound for d from other
//             hosts (ordered by host, then rank) and sends it in one message; d unpacks it.
//
// A rank knows how much it receives from every rank (its recv_counts), so a leader that packs
// the wrong amount shows up as a size mismatch naming both ranks.
#include <algorithm>
#include <cstring>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

namespace {

enum Phase : uint32_t { kLocal = 1, kGather = 2, kExchange = 3, kScatter = 4 };
enum Tag : uint32_t { kCounts = 0, kData = 1 };  // kData + i: the block of a host's rank i

}  // namespace

void two_level_all_to_allv(OpContext& c, const void* in, const size_t* send_counts,
                           const size_t* send_displs, void* out, const size_t* recv_counts,
                           const size_t* recv_displs) {
  const int n = c.size(), r = c.rank();
  const size_t es = c.elem();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  check_self_block(r, send_counts, recv_counts);

  // Plan: hosts in order of their first rank, ranks of each ascending.
  const auto& host_of = c.host_of();
  std::vector<std::vector<int>> hosts;
  std::vector<int> hidx(n, -1), lidx(n, 0);  // host number and index there, per rank
  {
    std::vector<int> seen(*std::max_element(host_of.begin(), host_of.end()) + 1, -1);
    for (int q = 0; q < n; ++q) {
      int& h = seen[host_of[q]];
      if (h < 0) {
        h = int(hosts.size());
        hosts.emplace_back();
      }
      hidx[q] = h;
      lidx[q] = int(hosts[h].size());
      hosts[h].push_back(q);
    }
  }
  const int nh = int(hosts.size()), me = hidx[r];
  const std::vector<int>& mine = hosts[me];
  const bool leader = mine[0] == r;
  std::vector<Handle> sends;

  // Local blocks, pairwise within the host.
  OpContext local = c.sub(mine, kLocal);
  const int nl = int(mine.size()), l = lidx[r];
  std::vector<Handle> local_recvs;
  for (int i = 1; i < nl; ++i) {
    const int from = mine[(l - i + nl) % nl];
    local_recvs.push_back(
        local.recv(lidx[from], dst + recv_displs[from] * es, recv_counts[from] * es, 0));
  }
  if (send_counts[r])
    copy_block(dst + recv_displs[r] * es, src + send_displs[r] * es, send_counts[r] * es);
  for (int i = 1; i < nl; ++i) {
    const int to = mine[(l + i) % nl];
    sends.push_back(local.send(lidx[to], src + send_displs[to] * es, send_counts[to] * es, 0));
  }

  // This rank's blocks for other hosts, packed by (host, rank).
  auto pack_remote = [&](char* buf) {
    size_t at = 0;
    for (int h = 0; h < nh; ++h) {
      if (h == me) continue;
      for (int q : hosts[h]) {
        std::memcpy(buf + at, src + send_displs[q] * es, send_counts[q] * es);
        at += send_counts[q] * es;
      }
    }
  };
  size_t remote_out = 0, remote_in = 0;  // elements this rank sends to / gets from other hosts
  for (int q = 0; q < n; ++q)
    if (hidx[q] != me) remote_out += send_counts[q], remote_in += recv_counts[q];

  OpContext gather = c.sub(mine, kGather);
  OpContext scatter = c.sub(mine, kScatter);
  char* inbound = c.scratch(std::max<size_t>(1, remote_in * es));
  if (nh > 1 && !leader) {
    std::vector<uint64_t> counts(send_counts, send_counts + n);
    char* packed = c.scratch(std::max<size_t>(1, remote_out * es));
    pack_remote(packed);
    Handle q = scatter.recv(0, inbound, remote_in * es, 0);
    sends.push_back(gather.send(0, counts.data(), n * sizeof(uint64_t), kCounts));
    sends.push_back(gather.send(0, packed, remote_out * es, kData));
    gather.wait(q);
  } else if (nh > 1) {
    // Gather: counts[i][q] = what local rank i sends rank q; data[i]: its packed blocks.
    std::vector<std::vector<uint64_t>> counts(nl, std::vector<uint64_t>(n));
    std::vector<char*> data(nl);
    counts[0].assign(send_counts, send_counts + n);
    data[0] = c.scratch(std::max<size_t>(1, remote_out * es));
    pack_remote(data[0]);
    std::vector<Handle> count_recvs;
    for (int i = 1; i < nl; ++i)
      count_recvs.push_back(gather.recv(i, counts[i].data(), n * sizeof(uint64_t), kCounts));
    std::vector<Handle> data_recvs;
    for (int i = 1; i < nl; ++i) {
      gather.wait(count_recvs[i - 1]);
      size_t total = 0;
      for (int q = 0; q < n; ++q)
        if (hidx[q] != me) total += counts[i][q];
      data[i] = c.scratch(std::max<size_t>(1, total * es));
      data_recvs.push_back(gather.recv(i, data[i], total * es, kData));
    }
    gather.wait_all(data_recvs);

    // Exchange with every other host's leader.
    std::vector<int> leaders;
    for (auto& h : hosts) leaders.push_back(h[0]);
    OpContext across = c.sub(leaders, kExchange);
    // Where host h's part starts in local rank i's packed data (elements).
    auto part_start = [&](int i, int h) {
      size_t at = 0;
      for (int g = 0; g < h; ++g)
        if (g != me)
          for (int q : hosts[g]) at += counts[i][q];
      return at;
    };
    std::vector<std::vector<uint64_t>> out_counts(nh), in_counts(nh);
    std::vector<Handle> in_count_recvs(nh);
    for (int h = 0; h < nh; ++h) {
      if (h == me) continue;
      in_counts[h].resize(hosts[h].size() * mine.size());
      in_count_recvs[h] = across.recv(h, in_counts[h].data(), in_counts[h].size() * 8, kCounts);
      for (int i = 0; i < nl; ++i)
        for (int q : hosts[h]) out_counts[h].push_back(counts[i][q]);
      sends.push_back(across.send(h, out_counts[h].data(), out_counts[h].size() * 8, kCounts));
      for (int i = 0; i < nl; ++i) {
        size_t len = 0;
        for (int q : hosts[h]) len += counts[i][q];
        sends.push_back(across.send(h, data[i] + part_start(i, h) * es, len * es, kData + i));
      }
    }
    // Receive every other host's blocks for this host: from[h][j] holds remote rank j's.
    std::vector<std::vector<char*>> from(nh);
    std::vector<Handle> remote_recvs;
    for (int h = 0; h < nh; ++h) {
      if (h == me) continue;
      across.wait(in_count_recvs[h]);
      const int nj = int(hosts[h].size());
      for (int j = 0; j < nj; ++j) {
        size_t len = 0;
        for (int d = 0; d < nl; ++d) len += in_counts[h][size_t(j) * nl + d];
        from[h].push_back(c.scratch(std::max<size_t>(1, len * es)));
        remote_recvs.push_back(across.recv(h, from[h][j], len * es, kData + j));
      }
    }
    across.wait_all(remote_recvs);

    // Scatter: for each local rank d, every remote rank's block for d, by (host, rank).
    for (int d = 0; d < nl; ++d) {
      size_t total = 0;
      for (int h = 0; h < nh; ++h)
        if (h != me)
          for (size_t j = 0; j < hosts[h].size(); ++j) total += in_counts[h][j * nl + d];
      char* buf = d == 0 ? inbound : c.scratch(std::max<size_t>(1, total * es));
      size_t at = 0;
      for (int h = 0; h < nh; ++h) {
        if (h == me) continue;
        for (size_t j = 0; j < hosts[h].size(); ++j) {
          size_t off = 0;  // where d's block starts in remote rank j's message
          for (int e = 0; e < d; ++e) off += in_counts[h][j * nl + e];
          const size_t len = in_counts[h][j * nl + d];
          std::memcpy(buf + at * es, from[h][j] + off * es, len * es);
          at += len;
        }
      }
      if (d > 0) {
        // The receiver knows what to expect: a wrong total is a reported size mismatch.
        sends.push_back(scatter.send(d, buf, total * es, 0));
      } else {
        MOE_CHECK(total == remote_in, "comm.all_to_allv", "rank ", r, " expects ", remote_in,
                  " elements from other hosts but they send ", total,
                  ": every rank's recv_counts must match what the others send");
      }
    }
  }

  // Unpack what came from other hosts, in (host, rank) order.
  size_t at = 0;
  for (int h = 0; h < nh; ++h) {
    if (h == me) continue;
    for (int q : hosts[h]) {
      std::memcpy(dst + recv_displs[q] * es, inbound + at * es, recv_counts[q] * es);
      at += recv_counts[q];
    }
  }
  c.wait_all(local_recvs);
  c.wait_all(sends);
}

}  // namespace moe::comm
