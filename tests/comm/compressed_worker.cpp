// comm_worker compressed: the compressed collectives (compression.h) against exact sums and
// the stated error bounds, on every rank, for each wire format and a few sizes; the traffic
// counters against the bytes the format must send; error feedback over 100 steps.
// Prints "compressed ok on rank R (N checks)" or FAIL lines; exit 0 or 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/communicator.h"

using namespace moe;
using namespace moe::comm;

namespace {

int g_bad = 0;
long g_checks = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && g_bad++ < 20) std::printf("FAIL %s\n", what.c_str());
}

// A value of rank r at index i and step s, every rank can recompute: magnitudes vary by 10^6
// between 128-blocks (so per-block scales matter) and inside a block.
float value(int r, size_t i, int s) {
  uint64_t h = (uint64_t(r) * 0x9e3779b97f4a7c15ull) ^ (uint64_t(i) * 0xbf58476d1ce4e5b9ull) ^
               (uint64_t(s) * 0x94d049bb133111ebull);
  h ^= h >> 31;
  h *= 0xd6e8feb86659fd93ull;
  h ^= h >> 32;
  const double u = double(h & 0xffffff) / double(0x1000000) * 2 - 1;  // [-1, 1)
  const int scale = int((i / 128 + size_t(r)) % 7) - 3;               // 1e-3 .. 1e3
  return float(u * std::pow(10.0, scale));
}

// Largest magnitude of x's 128-block (blocks from `base`) that holds index i.
float block_amax(const std::vector<float>& x, size_t base, size_t end, size_t i) {
  const size_t b0 = base + (i - base) / kWireBlock * kWireBlock;
  const size_t b1 = std::min(end, b0 + kWireBlock);
  float a = 0;
  for (size_t k = b0; k < b1; ++k) a = std::max(a, std::fabs(x[k]));
  return a;
}

std::vector<float> inputs(int r, size_t n, int s) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = value(r, i, s);
  return x;
}

// f32 summation slack: n terms of magnitude up to `mag`.
double slack(int n, double mag) { return 4.0 * n * mag * 6e-8 + 1e-30; }

void reduce_scatter_check(Communicator& c, Wire w, size_t rc) {
  const int n = c.size(), r = c.rank();
  std::vector<std::vector<float>> xs(n);
  for (int j = 0; j < n; ++j) xs[j] = inputs(j, rc * n, 1);
  std::vector<float> out(rc);
  const auto before = c.traffic();
  c.reduce_scatter(xs[r].data(), out.data(), rc, Dtype::kF32, ReduceOp::kSum, {w, nullptr});
  const auto after = c.traffic();
  const size_t k = size_t(OpKind::kReduceScatter);
  // Flat: n-1 encoded blocks. Two-level (H hosts of L ranks): (L-1) x H f32 blocks inside the
  // host and H-1 encoded ones across.
  const int H = c.num_hosts(), L = c.local_size();
  const bool two = H > 1 && L > 1 && H * L == n;
  const size_t want_sent = two ? size_t(L - 1) * H * rc * 4 + (H - 1) * wire_bytes(w, rc)
                               : (n - 1) * wire_bytes(w, rc);
  const size_t want_inter = two ? (H - 1) * wire_bytes(w, rc) : size_t(n - L) * wire_bytes(w, rc);
  expect(after.sent[k] - before.sent[k] == want_sent,
         std::string("reduce_scatter ") + wire_name(w) + " sent " +
             std::to_string(after.sent[k] - before.sent[k]) + " bytes, want " +
             std::to_string(want_sent));
  expect(after.inter_host[k] - before.inter_host[k] == want_inter,
         std::string("reduce_scatter ") + wire_name(w) + " sent " +
             std::to_string(after.inter_host[k] - before.inter_host[k]) +
             " bytes to other hosts, want " + std::to_string(want_inter));
  double worst = 0;
  for (size_t i = 0; i < rc; ++i) {
    const size_t at = size_t(r) * rc + i;
    double exact = 0, bound = 0, mag = 0;
    for (int j = 0; j < n; ++j) {
      exact += xs[j][at];
      mag += std::fabs(xs[j][at]);
      if (j != r)
        bound += wire_error_bound(w, xs[j][at], block_amax(xs[j], size_t(r) * rc, size_t(r + 1) * rc, at));
    }
    const double err = std::fabs(out[i] - exact);
    worst = std::max(worst, err / (bound + slack(n, mag)));
    expect(err <= bound * (1 + 1e-4) + slack(n, mag),
           std::string("reduce_scatter ") + wire_name(w) + " rc " + std::to_string(rc) + " [" +
               std::to_string(i) + "]: error " + std::to_string(err) + " > bound " +
               std::to_string(bound));
  }
  if (r == 0)
    std::printf("reduce_scatter %s x %zu: worst error / (bound + f32 summation slack) %.3f\n", wire_name(w), rc, worst);
}

void all_reduce_check(Communicator& c, Wire w, size_t count) {
  const int n = c.size(), r = c.rank();
  std::vector<std::vector<float>> xs(n);
  for (int j = 0; j < n; ++j) xs[j] = inputs(j, count, 2);
  std::vector<float> out(count), all(count * n);
  c.all_reduce(xs[r].data(), out.data(), count, Dtype::kF32, ReduceOp::kSum, {w, nullptr});
  // Every rank ends with the same bits.
  c.all_gather(out.data(), all.data(), count, Dtype::kF32);
  bool same = true;
  for (int j = 0; j < n; ++j)
    same &= std::equal(out.begin(), out.end(), all.begin() + long(j * count));
  expect(same, std::string("all_reduce ") + wire_name(w) + ": ranks disagree");
  // Segment s is reduced by rank s (phase 1: one rounding per other rank) and then encoded
  // once more for everyone (phase 2: one rounding of the sum, block scale of the sum's block).
  std::vector<double> exact(count), b1(count), mag(count);
  for (int s = 0; s < n; ++s) {
    const size_t lo = count * s / n, hi = count * (s + 1) / n;
    for (size_t i = lo; i < hi; ++i) {
      for (int j = 0; j < n; ++j) {
        exact[i] += xs[j][i];
        mag[i] += std::fabs(xs[j][i]);
        if (j != s) b1[i] += wire_error_bound(w, xs[j][i], block_amax(xs[j], lo, hi, i));
      }
    }
    std::vector<float> sum_hi(count);  // the largest the reduced value can be
    for (size_t i = lo; i < hi; ++i) sum_hi[i] = float(std::fabs(exact[i]) + b1[i]);
    for (size_t i = lo; i < hi; ++i) {
      const double bound = b1[i] + wire_error_bound(w, sum_hi[i], block_amax(sum_hi, lo, hi, i));
      const double err = std::fabs(out[i] - exact[i]);
      expect(err <= bound * (1 + 1e-4) + slack(n, mag[i]),
             std::string("all_reduce ") + wire_name(w) + " count " + std::to_string(count) + " [" +
                 std::to_string(i) + "]: error " + std::to_string(err) + " > bound " +
                 std::to_string(bound));
    }
  }
}

void all_to_allv_check(Communicator& c, Wire w) {
  const int n = c.size(), r = c.rank();
  // Rank j sends rank d (3 + j + 2d) * 100 values, rows of a 100-wide hidden state.
  auto cnt = [](int j, int d) { return size_t(3 + j + 2 * d) * 100; };
  std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
  size_t st = 0, rt = 0;
  for (int d = 0; d < n; ++d) sc[d] = cnt(r, d), sd[d] = st, st += sc[d];
  for (int j = 0; j < n; ++j) rc[j] = cnt(j, r), rd[j] = rt, rt += rc[j];
  std::vector<float> in = inputs(r, st, 3), out(rt);
  const auto before = c.traffic();
  c.all_to_allv(in.data(), sc, sd, out.data(), rc, rd, Dtype::kF32, w);
  const auto after = c.traffic();
  size_t want = 0;
  for (int d = 0; d < n; ++d)
    if (d != r) want += wire_bytes(w, sc[d]);
  const size_t k = size_t(OpKind::kAllToAllv);
  // Two-level: leaders also forward their host's blocks and send counts, so only "at least".
  const bool fwd = c.all_to_all_algo() == Algo::kTwoLevel;
  expect(fwd ? after.sent[k] - before.sent[k] >= want : after.sent[k] - before.sent[k] == want, std::string("all_to_allv ") + wire_name(w) +
                                                     " sent " +
                                                     std::to_string(after.sent[k] - before.sent[k]) +
                                                     " bytes, want " + std::to_string(want));
  for (int j = 0; j < n; ++j) {
    const std::vector<float> xj = inputs(j, [&] {
      size_t t = 0;
      for (int d = 0; d < n; ++d) t += cnt(j, d);
      return t;
    }(), 3);
    size_t off = 0;
    for (int d = 0; d < r; ++d) off += cnt(j, d);
    for (size_t i = 0; i < rc[j]; ++i) {
      const float x = xj[off + i], got = out[rd[j] + i];
      const double bound =
          j == r ? 0 : wire_error_bound(w, x, block_amax(xj, off, off + rc[j], off + i));
      expect(std::fabs(got - x) <= bound * (1 + 1e-4),
             std::string("all_to_allv ") + wire_name(w) + " from " + std::to_string(j) + " [" +
                 std::to_string(i) + "]: " + std::to_string(got) + " vs " + std::to_string(x));
    }
  }
}

// 100 steps of int8 reduce_scatter. Every block holds one value of magnitude 1 and small ones
// (1e-3, under int8's resolution of 1/254 there): without error feedback they are lost every
// step; with it, what arrives over the 100 steps differs from the exact total by what the
// senders still hold in their residuals (one step's rounding each).
void error_feedback_check(Communicator& c) {
  const int n = c.size(), r = c.rank();
  const size_t rc = 1000, N = rc * n;
  auto x_of = [&](int j, size_t i, int s) {
    return i % 128 == 0 ? float(1 + 0.1 * ((s + j) % 3)) : float(1e-3 * (1 + (i + j) % 4)) +
                                                              1e-5f * float((i * 7 + size_t(s)) % 11);
  };
  std::vector<float> res(N, 0.0f), x(N), out(rc);
  std::vector<double> got_ef(rc, 0), got_plain(rc, 0), exact(rc, 0);
  double worst_step = 0;
  for (int s = 0; s < 100; ++s) {
    for (size_t i = 0; i < N; ++i) x[i] = x_of(r, i, s);
    c.reduce_scatter(x.data(), out.data(), rc, Dtype::kF32, ReduceOp::kSum, {Wire::kInt8, res.data()});
    for (size_t i = 0; i < rc; ++i) got_ef[i] += out[i];
    c.reduce_scatter(x.data(), out.data(), rc, Dtype::kF32, ReduceOp::kSum, {Wire::kInt8, nullptr});
    for (size_t i = 0; i < rc; ++i) got_plain[i] += out[i];
    for (size_t i = 0; i < rc; ++i)
      for (int j = 0; j < n; ++j) exact[i] += x_of(j, size_t(r) * rc + i, s);
    // Each residual is one rounding: at most (largest |x + residual| of its block) / 254,
    // where two-level reduce_scatter encodes sums of the host's L ranks.
    for (size_t i = 0; i < N; ++i) worst_step = std::max(worst_step, double(std::fabs(res[i])));
  }
  const int L = c.num_hosts() > 1 ? c.local_size() : 1;
  expect(worst_step <= L * 1.3 / 254 * (1 + 1e-5),
         "error feedback: a residual of " + std::to_string(worst_step) + " > " +
             std::to_string(L) + " x 1.3/254");
  // What the others still hold for this rank's block.
  std::vector<float> all(N * n);
  c.all_gather(res.data(), all.data(), N, Dtype::kF32);
  double ef = 0, plain = 0;
  for (size_t i = 0; i < rc; ++i) {
    double held = 0;
    for (int j = 0; j < n; ++j) held += all[size_t(j) * N + size_t(r) * rc + i];
    const double err = exact[i] - got_ef[i];
    expect(std::fabs(err - held) <= 1e-4 * (1 + std::fabs(exact[i])),
           "error feedback: lost " + std::to_string(err) + " but residuals hold " +
               std::to_string(held));
    ef = std::max(ef, std::fabs(err));
    plain = std::max(plain, std::fabs(exact[i] - got_plain[i]));
  }
  expect(ef <= (n - 1) * 1.3 / 254 + 1e-3,
         "error feedback: accumulated error " + std::to_string(ef) + " after 100 steps");
  expect(plain > 10 * ef, "without error feedback the error (" + std::to_string(plain) +
                              ") should grow far past one step's (" + std::to_string(ef) + ")");
  if (r == 0)
    std::printf("error feedback over 100 int8 steps: max error %.5f with, %.5f without\n", ef,
                plain);
}

}  // namespace

int compressed_test(Communicator& c) {
  for (Wire w : {Wire::kBF16, Wire::kFP8, Wire::kInt8}) {
    for (size_t n : {size_t(1), size_t(127), size_t(1000), size_t(70001)}) {
      reduce_scatter_check(c, w, n);
      all_reduce_check(c, w, n * 3 + 1);
    }
    all_to_allv_check(c, w);
  }
  error_feedback_check(c);
  std::printf("compressed %s on rank %d (%ld checks)\n", g_bad ? "FAIL" : "ok", c.rank(),
              g_checks);
  return g_bad ? 1 : 0;
}
