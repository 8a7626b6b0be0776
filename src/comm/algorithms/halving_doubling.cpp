// Recursive halving-doubling all_reduce (Rabenseifner; Thakur, Rabenseifner & Gropp 2005),
// for small and medium messages where the ring's 2(n-1) latency-bound steps dominate.
//
// With p the largest power of two <= n and rem = n - p:
//   fold:     ranks below 2*rem pair up; each even one sends all its data to the odd one
//             above it and sits out, leaving p active ranks with virtual ids 0..p-1.
//   halving:  log2(p) steps; in the step with bit `mask`, a rank swaps half of its current
//             block range with the partner vid^mask, keeps the half its bit selects and adds
//             the partner's copy of it. The range halves each step, ending at block vid.
//   doubling: log2(p) steps the other way; partners swap their (reduced) ranges, doubling
//             them, until every rank has all p blocks.
//   unfold:   odd ranks below 2*rem send the result back to their even partners.
//
// 2*log2(p) (+2) steps, each rank moves about 2x the data: latency-optimal up to a constant.
// Each block is reduced by exactly one rank, so the result is bitwise the same everywhere.
#include <cstring>

#include "comm/algorithms/algorithms.h"

namespace moe::comm {

namespace {

constexpr uint32_t kFoldTag = 1000;
constexpr uint32_t kUnfoldTag = 1001;

struct HdPlan {
  int n, r, p, rem;
  int vid;          // -1: this rank sits out after folding
  size_t count, blocks;
  int real(int v) const { return v < rem ? 2 * v + 1 : v + rem; }
  size_t block_off(size_t b) const { return count * b / size_t(p); }
};

}  // namespace

void halving_doubling_all_reduce(OpContext& c, const void* in, void* out, size_t count,
                                 bool halve) {
  HdPlan pl{};
  pl.n = c.size();
  pl.r = c.rank();
  pl.p = 1;
  while (pl.p * 2 <= pl.n) pl.p *= 2;
  pl.rem = pl.n - pl.p;
  pl.count = count;
  if (pl.r < 2 * pl.rem) pl.vid = pl.r % 2 ? pl.r / 2 : -1;
  else pl.vid = pl.r - pl.rem;

  const size_t es = c.elem();
  const size_t bytes = count * es;
  char* o = static_cast<char*>(out);
  if (pl.vid < 0) {
    Handle s = c.send(pl.r + 1, in, bytes, kFoldTag);
    Handle q = c.recv(pl.r + 1, o, bytes, kUnfoldTag);
    c.wait(s);
    c.wait(q);
    return;
  }
  char* tmp = c.scratch(bytes);
  const char* cur = static_cast<const char*>(in);  // this rank's partial result so far
  if (pl.r < 2 * pl.rem) {
    Handle q = c.recv(pl.r - 1, tmp, bytes, kFoldTag);
    c.wait(q);
    c.reduce(o, in, tmp, count);
    cur = o;
  }

  uint32_t step = 0;
  for (int mask = 1; !halve && mask < pl.p; mask *= 2, ++step) {
    // Both partners hold the same bits for each side's partial result and a op b == b op a,
    // so both come out with the same bits again.
    const int partner = pl.real(pl.vid ^ mask);
    Handle s = c.send(partner, cur, bytes, step);
    Handle q = c.recv(partner, tmp, bytes, step);
    c.wait(q);
    c.wait(s);  // `cur` is on the wire until then
    c.reduce(o, cur, tmp, count);
    cur = o;
  }
  if (cur != o && bytes) std::memcpy(o, cur, bytes);
  size_t lo = 0, hi = size_t(pl.p);  // block range this rank is responsible for
  for (int mask = pl.p / 2; halve && mask >= 1; mask /= 2, ++step) {
    const int partner = pl.real(pl.vid ^ mask);
    const size_t mid = (lo + hi) / 2;
    const bool upper = pl.vid & mask;
    const size_t keep_lo = upper ? mid : lo, keep_hi = upper ? hi : mid;
    const size_t give_lo = upper ? lo : mid, give_hi = upper ? mid : hi;
    const size_t k0 = pl.block_off(keep_lo), k1 = pl.block_off(keep_hi);
    const size_t g0 = pl.block_off(give_lo), g1 = pl.block_off(give_hi);
    Handle s = c.send(partner, o + g0 * es, (g1 - g0) * es, step);
    Handle q = c.recv(partner, tmp, (k1 - k0) * es, step);
    c.wait(q);
    c.reduce(o + k0 * es, o + k0 * es, tmp, k1 - k0);
    c.wait(s);
    lo = keep_lo;
    hi = keep_hi;
  }
  for (int mask = 1; halve && mask < pl.p; mask *= 2, ++step) {
    const int partner = pl.real(pl.vid ^ mask);
    const size_t w = hi - lo;
    const bool upper = pl.vid & mask;
    const size_t their_lo = upper ? lo - w : hi, their_hi = upper ? lo : hi + w;
    const size_t m0 = pl.block_off(lo), m1 = pl.block_off(hi);
    const size_t t0 = pl.block_off(their_lo), t1 = pl.block_off(their_hi);
    Handle s = c.send(partner, o + m0 * es, (m1 - m0) * es, step);
    Handle q = c.recv(partner, o + t0 * es, (t1 - t0) * es, step);
    c.wait(q);
    c.wait(s);
    lo = std::min(lo, their_lo);
    hi = std::max(hi, their_hi);
  }
  if (pl.r < 2 * pl.rem) {
    Handle s = c.send(pl.r - 1, o, bytes, kUnfoldTag);
    c.wait(s);
  }
}

}  // namespace moe::comm
