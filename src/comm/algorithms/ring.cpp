// Ring (NCCL, Baidu ring all-reduce; MLX's plan-then-run shape).
//
// The n ranks form a ring r -> r+1. The data is cut into n segments (lengths differ by at most
// one element). Two phases, n-1 steps each:
//
//   reduce-scatter: in step s, rank r sends segment (r-s-1) to its right and receives segment
//     (r-s-2) from its left, adding its own input to it. A segment picks up one contribution
//     per hop, so after n-1 steps rank r holds segment r fully reduced.
//   all-gather: in step s, rank r sends segment (r-s) and receives segment (r-s-1), which it
//     forwards in the next step. After n-1 steps every rank has every segment.
//
// Each rank sends and receives 2(n-1)/n of the data for all_reduce, the bandwidth optimum;
// latency grows with n, so small messages go to halving-doubling instead. Segments are cut
// into pieces so receiving piece k+1 overlaps reducing piece k and forwarding it on, and the
// next steps' receives are posted early (two buffers) so data rarely arrives unexpected.
// Every segment is reduced by exactly one rank in a fixed order, so all ranks end bitwise equal.
#include <algorithm>
#include <cstring>
#include <functional>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

namespace {

constexpr uint32_t kMaxPieces = 1u << 16;

struct RingPlan {
  int n = 1, r = 0, left = 0, right = 0;
  std::vector<size_t> seg_off, seg_len;  // elements, per segment (n)
  size_t piece = 1;                      // elements per piece
  size_t max_seg = 0;
  int mod(int x) const { return ((x % n) + n) % n; }
  // Reduce-scatter step s: send segment rs_send(s), receive rs_recv(s).
  int rs_send(int s) const { return mod(r - s - 1); }
  int rs_recv(int s) const { return mod(r - s - 2); }
  int ag_send(int s) const { return mod(r - s); }
  int ag_recv(int s) const { return mod(r - s - 1); }
  size_t pieces(int seg) const { return std::max<size_t>(1, (seg_len[seg] + piece - 1) / piece); }
  size_t piece_off(size_t k) const { return k * piece; }
  size_t piece_len(int seg, size_t k) const {
    const size_t off = k * piece;
    return off >= seg_len[seg] ? 0 : std::min(piece, seg_len[seg] - off);
  }
  uint32_t tag(int step, size_t k) const { return uint32_t(step) * kMaxPieces + uint32_t(k); }
};

// Segments either split `count` evenly (all_reduce) or are n blocks of `block` (the others).
RingPlan make_plan(const OpContext& c, size_t count, size_t block, size_t piece_bytes) {
  RingPlan p;
  p.n = c.size();
  p.r = c.rank();
  p.left = p.mod(p.r - 1);
  p.right = p.mod(p.r + 1);
  for (int i = 0; i < p.n; ++i) {
    const size_t lo = block ? i * block : count * size_t(i) / p.n;
    const size_t hi = block ? (i + 1) * block : count * size_t(i + 1) / p.n;
    p.seg_off.push_back(lo);
    p.seg_len.push_back(hi - lo);
    p.max_seg = std::max(p.max_seg, hi - lo);
  }
  p.piece = std::max<size_t>(1, piece_bytes / c.elem());
  p.piece = std::max(p.piece, (p.max_seg + kMaxPieces - 2) / (kMaxPieces - 1));
  return p;
}

// The reduce-scatter phase. `in` holds all n segments of this rank's input; the reduced
// segment of step s goes to acc(s, seg) (which must stay intact until the next step's send of
// it completes). `fuse`: every step's accumulator is its own memory (a segment of the output),
// so the transport may reduce into it as the data comes (OpContext::recv_reduce), before the
// sends of earlier steps are done.
void run_reduce_scatter(OpContext& c, const RingPlan& p, const char* in,
                        const std::function<char*(int, int)>& acc,
                        std::vector<std::vector<Handle>>& sends, bool fuse) {
  const size_t es = c.elem();
  const int steps = p.n - 1;
  char* rbuf[2] = {c.scratch(p.max_seg * es), c.scratch(p.max_seg * es)};
  std::vector<std::vector<Handle>> recvs(steps);
  sends.assign(steps, {});
  auto post_recvs = [&](int s) {
    if (s >= steps) return;
    const int seg = p.rs_recv(s);
    for (size_t k = 0; k < p.pieces(seg); ++k) {
      const size_t off = p.piece_off(k), len = p.piece_len(seg, k);
      char* const scratch = rbuf[s % 2] + off * es;
      recvs[s].push_back(fuse ? c.recv_reduce(p.left, scratch, acc(s, seg) + off * es,
                                              in + (p.seg_off[seg] + off) * es, len, p.tag(s, k))
                              : c.recv(p.left, scratch, len * es, p.tag(s, k)));
    }
  };
  post_recvs(0);
  post_recvs(1);
  {
    const int seg = p.rs_send(0);
    for (size_t k = 0; k < p.pieces(seg); ++k)
      sends[0].push_back(c.send(p.right, in + (p.seg_off[seg] + p.piece_off(k)) * es,
                                p.piece_len(seg, k) * es, p.tag(0, k)));
  }
  for (int s = 0; s < steps; ++s) {
    const int seg = p.rs_recv(s);
    char* dst = acc(s, seg);
    if (s >= 1) c.wait_all(sends[s - 1]);  // they may read the accumulator we now overwrite
    for (size_t k = 0; k < p.pieces(seg); ++k) {
      const size_t off = p.piece_off(k), len = p.piece_len(seg, k);
      if (fuse) {
        c.wait_reduce(recvs[s][k]);
      } else {
        c.wait(recvs[s][k]);
        c.reduce(dst + off * es, in + (p.seg_off[seg] + off) * es, rbuf[s % 2] + off * es, len);
      }
      if (s + 1 < steps)  // the segment reduced now is the one sent in the next step
        sends[s + 1].push_back(c.send(p.right, dst + off * es, len * es, p.tag(s + 1, k)));
    }
    recvs[s].clear();
    post_recvs(s + 2);
  }
}

// Posts every receive of the all-gather phase (into `out`, n segments).
std::vector<std::vector<Handle>> post_all_gather(OpContext& c, const RingPlan& p, char* out,
                                                 int step0) {
  const size_t es = c.elem();
  std::vector<std::vector<Handle>> recvs(p.n - 1);
  for (int s = 0; s < p.n - 1; ++s) {
    const int seg = p.ag_recv(s);
    for (size_t k = 0; k < p.pieces(seg); ++k)
      recvs[s].push_back(c.recv(p.left, out + (p.seg_off[seg] + p.piece_off(k)) * es,
                                p.piece_len(seg, k) * es, p.tag(step0 + s, k)));
  }
  return recvs;
}

// The all-gather phase: this rank's own segment is already in place in `out`.
void run_all_gather(OpContext& c, const RingPlan& p, char* out, int step0,
                    std::vector<std::vector<Handle>> recvs) {
  const size_t es = c.elem();
  const int steps = p.n - 1;
  std::vector<Handle> sends;
  {
    const int seg = p.ag_send(0);
    for (size_t k = 0; k < p.pieces(seg); ++k)
      sends.push_back(c.send(p.right, out + (p.seg_off[seg] + p.piece_off(k)) * es,
                             p.piece_len(seg, k) * es, p.tag(step0, k)));
  }
  for (int s = 0; s < steps; ++s) {
    const int seg = p.ag_recv(s);
    for (size_t k = 0; k < p.pieces(seg); ++k) {
      c.wait(recvs[s][k]);
      if (s + 1 < steps)
        sends.push_back(c.send(p.right, out + (p.seg_off[seg] + p.piece_off(k)) * es,
                               p.piece_len(seg, k) * es, p.tag(step0 + s + 1, k)));
    }
  }
  c.wait_all(sends);
}

}  // namespace

void ring_all_reduce(OpContext& c, const void* in, void* out, size_t count, size_t piece_bytes) {
  const RingPlan p = make_plan(c, count, 0, piece_bytes);
  char* o = static_cast<char*>(out);
  const size_t es = c.elem();
  std::vector<std::vector<Handle>> sends;
  // The all-gather's receives are posted before the reduce-scatter starts, so its data never
  // waits in a stash. That is safe although they land in segments the reduce-scatter still
  // reads and writes: a segment's all-gather data exists only once the segment is fully
  // reduced, which needs this rank's own (last) send of it to have left the buffer.
  auto ag_recvs = post_all_gather(c, p, o, p.n - 1);
  run_reduce_scatter(
      c, p, static_cast<const char*>(in), [&](int, int seg) { return o + p.seg_off[seg] * es; },
      sends, /*fuse=*/true);
  run_all_gather(c, p, o, p.n - 1, std::move(ag_recvs));
  for (auto& s : sends) c.wait_all(s);
}

void ring_reduce_scatter_segments(OpContext& c, const void* in, void* out, size_t count,
                                  size_t piece_bytes) {
  const RingPlan p = make_plan(c, count, 0, piece_bytes);
  char* o = static_cast<char*>(out);
  const size_t es = c.elem();
  std::vector<std::vector<Handle>> sends;
  run_reduce_scatter(
      c, p, static_cast<const char*>(in), [&](int, int seg) { return o + p.seg_off[seg] * es; },
      sends, /*fuse=*/true);
  for (auto& s : sends) c.wait_all(s);
}

void ring_all_gather_segments(OpContext& c, void* out, size_t count, size_t piece_bytes) {
  const RingPlan p = make_plan(c, count, 0, piece_bytes);
  char* o = static_cast<char*>(out);
  run_all_gather(c, p, o, 0, post_all_gather(c, p, o, 0));
}

void ring_reduce_scatter(OpContext& c, const void* in, void* out, size_t recv_count,
                         size_t piece_bytes) {
  const RingPlan p = make_plan(c, 0, recv_count, piece_bytes);
  const size_t es = c.elem();
  char* accs[2] = {c.scratch(p.max_seg * es), c.scratch(p.max_seg * es)};
  std::vector<std::vector<Handle>> sends;
  const int last = p.n - 2;
  run_reduce_scatter(
      c, p, static_cast<const char*>(in),
      [&](int s, int) { return s == last ? static_cast<char*>(out) : accs[s % 2]; }, sends,
      /*fuse=*/false);  // the accumulators take turns: a send may still read one
  for (auto& s : sends) c.wait_all(s);
}

void ring_all_gather(OpContext& c, const void* in, void* out, size_t send_count,
                     size_t piece_bytes) {
  const RingPlan p = make_plan(c, 0, send_count, piece_bytes);
  char* o = static_cast<char*>(out);
  const size_t es = c.elem();
  char* mine = o + p.seg_off[p.r] * es;
  if (mine != in && send_count) std::memmove(mine, in, send_count * es);
  run_all_gather(c, p, o, 0, post_all_gather(c, p, o, 0));
}

}  // namespace moe::comm
