// One rank of a multi-process comm test; started by the launcher (tests/comm/comm_test.cpp).
//   comm_worker sweep [max_count [big_bytes]]  every collective x dtype x op x size x algorithm
//                                   vs closed-form values (+ an f32 all_reduce of big_bytes)
//   comm_worker split | p2p | hello
//   comm_worker compressed          bf16/fp8/int8 collectives vs exact sums and their bounds
//   comm_worker loop BYTES          all_reduce of BYTES forever (a victim is killed from outside)
//   comm_worker churn               allocates, uses and frees Communicator::alloc buffers 40
//                                   times; prints how many such buffers this rank has mapped
// MOE_TEST_REGISTERED=1: sweep and loop use Communicator::alloc buffers.
//   comm_worker hier_vs_ring BYTES  times flat ring and hierarchical all_reduce
//   comm_worker mismatch KIND       rank 1 calls another collective (kind) or size (size)
//   comm_worker stall SECONDS       rank 1 sleeps before the collective
// Exit 0 on success; 1 with "FAIL ..." lines on a wrong value; 3 with the error on moe::Error.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"

using namespace moe;
using namespace moe::comm;

int compressed_test(Communicator& c);  // compressed_worker.cpp

namespace {

int g_fail = 0;
long g_checks = 0;
// MOE_TEST_REGISTERED=1: every buffer of the sweep comes from Communicator::alloc, so the
// shared-memory transport copies from (and reduces straight from) mapped peer buffers.
Communicator* g_alloc_from = nullptr;

// Values that every dtype holds exactly (small integers and halves), so closed forms are exact.
double contrib(int r, size_t i) {
  const double k = double(i % 5 + 1);
  return (i % 2 ? -1.0 : 1.0) * k * (r + 1);
}
double expect_reduce(int n, size_t i, ReduceOp op) {
  const double k = double(i % 5 + 1), s = i % 2 ? -1.0 : 1.0;
  switch (op) {
    case ReduceOp::kSum: return s * k * n * (n + 1) / 2;
    case ReduceOp::kAvg: return s * k * (n + 1) / 2.0;
    case ReduceOp::kMax: return s > 0 ? k * n : -k;
    case ReduceOp::kMin: return s > 0 ? k : -k * n;
  }
  return 0;
}
double tagval(int a, int b, size_t j) { return double(a * 8 + b + (j % 4) * 64); }

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}
float from_bf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Elements of one dtype in heap memory, or in a Communicator::alloc buffer.
struct Mem {
  std::vector<char> heap;
  CommBuffer reg;
  char* p;
  explicit Mem(size_t bytes) {
    if (g_alloc_from) {
      reg = g_alloc_from->alloc(bytes);
      p = reg.as<char>();
    } else {
      heap.assign(bytes, 0);
      p = heap.data();
    }
  }
  char* data() const { return p; }
};

struct Buf {
  Dtype t;
  Mem b;
  Buf(Dtype t_, size_t n) : t(t_), b(n * comm_dtype_size(t_) + 1) {}
  void* data() { return b.data(); }
  void set(size_t i, double v) {
    switch (t) {
      case Dtype::kF32: reinterpret_cast<float*>(b.data())[i] = float(v); break;
      case Dtype::kF64: reinterpret_cast<double*>(b.data())[i] = v; break;
      case Dtype::kI32: reinterpret_cast<int32_t*>(b.data())[i] = int32_t(v); break;
      case Dtype::kI64: reinterpret_cast<int64_t*>(b.data())[i] = int64_t(v); break;
      case Dtype::kBF16: reinterpret_cast<uint16_t*>(b.data())[i] = to_bf16(float(v)); break;
      case Dtype::kF16: {
        _Float16 h = static_cast<_Float16>(float(v));
        std::memcpy(b.data() + 2 * i, &h, 2);
        break;
      }
      default: break;
    }
  }
  double get(size_t i) const {
    switch (t) {
      case Dtype::kF32: return reinterpret_cast<const float*>(b.data())[i];
      case Dtype::kF64: return reinterpret_cast<const double*>(b.data())[i];
      case Dtype::kI32: return reinterpret_cast<const int32_t*>(b.data())[i];
      case Dtype::kI64: return double(reinterpret_cast<const int64_t*>(b.data())[i]);
      case Dtype::kBF16: return from_bf16(reinterpret_cast<const uint16_t*>(b.data())[i]);
      case Dtype::kF16: {
        _Float16 h;
        std::memcpy(&h, b.data() + 2 * i, 2);
        return float(h);
      }
      default: return 0;
    }
  }
};

void check(const Buf& b, size_t i, double want, const std::string& what, int rank) {
  ++g_checks;
  const double got = b.get(i);
  if (got == want) return;
  if (g_fail++ < 10)
    std::printf("FAIL rank %d %s: element %zu is %g, want %g\n", rank, what.c_str(), i, got, want);
}

std::string name(const char* op, Dtype t, size_t n, const char* extra = "") {
  return std::string(op) + " " + comm_dtype_name(t) + " count " + std::to_string(n) + " " + extra;
}

// Every all_reduce and all_to_all(v) algorithm that applies: the two-level ones when the
// communicator spans hosts (MOE_HOST_ID makes fake ones).
std::vector<const char*> all_reduce_algos(const Communicator& c) {
  if (c.num_hosts() > 1) return {"ring", "rd", "rhd", "hier", "direct"};
  return {"ring", "rd", "rhd", "direct"};
}
std::vector<const char*> a2a_algos(const Communicator& c) {
  if (c.num_hosts() > 1) return {"pairwise", "two_level"};
  return {"pairwise"};
}

void all_to_all_check(Communicator& c, Dtype t, size_t cnt, const char* algo);

// f32 sum all_reduce of `bytes` with every algorithm (the 64 MiB case).
void big_all_reduce(Communicator& c, size_t bytes) {
  const int n = c.size(), r = c.rank();
  const size_t cnt = bytes / 4;
  Mem mem(bytes);
  float* a = reinterpret_cast<float*>(mem.data());
  for (const char* algo : all_reduce_algos(c)) {
    c.set_algo(algo);
    for (size_t i = 0; i < cnt; ++i) a[i] = float(contrib(r, i));
    c.all_reduce(a, a, cnt, Dtype::kF32, ReduceOp::kSum);
    ++g_checks;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < cnt; ++i)
      if (a[i] != float(expect_reduce(n, i, ReduceOp::kSum)) && !bad++) first = i;
    if (bad && g_fail++ < 10)
      std::printf("FAIL rank %d all_reduce f32 %zu bytes %s: %zu wrong, first at %zu (%g)\n", r,
                  bytes, algo, bad, first, double(a[first]));
  }
  c.set_algo("auto");
}

int sweep(Communicator& c, size_t max_count, size_t big_bytes) {
  const int n = c.size(), r = c.rank();
  if (r == 0)
    std::printf("sweep: transport %s, hosts %d\n", c.transport_info().c_str(), c.num_hosts());
  std::fflush(stdout);
  if (big_bytes) big_all_reduce(c, big_bytes);
  const Dtype types[] = {Dtype::kF32, Dtype::kF64, Dtype::kBF16, Dtype::kF16, Dtype::kI32,
                         Dtype::kI64};
  const ReduceOp ops[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin};
  std::vector<size_t> sizes = {0, 1, 7, size_t(3 * n + 1), 1000, 65537};
  for (Dtype t : types) {
    std::vector<size_t> sz = sizes;
    if (t == Dtype::kF32 && max_count > 65537) sz.push_back(max_count);
    for (size_t cnt : sz) {
      for (ReduceOp op : ops) {
        if (op == ReduceOp::kAvg && !is_float_dtype(t)) continue;
        for (const char* algo : all_reduce_algos(c)) {
          c.set_algo(algo);
          for (int inplace = 0; inplace < 2; ++inplace) {
            Buf in(t, cnt), out(t, cnt);
            for (size_t i = 0; i < cnt; ++i) in.set(i, contrib(r, i));
            Buf& dst = inplace ? in : out;
            c.all_reduce(in.data(), dst.data(), cnt, t, op);
            const std::string w = name("all_reduce", t, cnt, algo) + reduce_op_name(op);
            for (size_t i = 0; i < cnt; ++i) check(dst, i, expect_reduce(n, i, op), w, r);
          }
        }
        c.set_algo("auto");
        // reduce_scatter: block b of rank r's input holds contributions for global index
        // b*cnt + j.
        Buf in(t, cnt * n), out(t, cnt);
        for (size_t i = 0; i < cnt * n; ++i) in.set(i, contrib(r, i));
        c.reduce_scatter(in.data(), out.data(), cnt, t, op);
        const std::string w = name("reduce_scatter", t, cnt) + reduce_op_name(op);
        for (size_t j = 0; j < cnt; ++j) check(out, j, expect_reduce(n, r * cnt + j, op), w, r);
      }
      {  // all_gather
        Buf in(t, cnt), out(t, cnt * n);
        for (size_t j = 0; j < cnt; ++j) in.set(j, tagval(r, 0, j));
        c.all_gather(in.data(), out.data(), cnt, t);
        const std::string w = name("all_gather", t, cnt);
        for (int s = 0; s < n; ++s)
          for (size_t j = 0; j < cnt; ++j) check(out, s * cnt + j, tagval(s, 0, j), w, r);
      }
      for (int root : {0, n - 1}) {  // broadcast
        Buf b(t, cnt);
        for (size_t j = 0; j < cnt; ++j) b.set(j, r == root ? tagval(root, 1, j) : -1);
        c.broadcast(b.data(), cnt, t, root);
        const std::string w = name("broadcast", t, cnt, "root ") + std::to_string(root);
        for (size_t j = 0; j < cnt; ++j) check(b, j, tagval(root, 1, j), w, r);
      }
      for (const char* a2a : a2a_algos(c)) {
        c.set_algo_a2a(a2a);
        all_to_all_check(c, t, cnt, a2a);
      }
      c.set_algo_a2a("auto");
    }
  }
  c.barrier();
  // Everyone agrees on the number of failures.
  int64_t fails = g_fail;
  c.all_reduce(&fails, &fails, 1, Dtype::kI64, ReduceOp::kSum);
  if (r == 0) std::printf("sweep: world %d, %ld checks on rank 0, %lld failures in all\n", n,
                          g_checks, static_cast<long long>(fails));
  const ShmStats st = c.transport_stats();
  std::printf("sweep: rank %d offers read: %llu by cma, %llu mapped, %llu reduced from mapped\n", r,
              static_cast<unsigned long long>(st.cma_reads),
              static_cast<unsigned long long>(st.mapped_reads),
              static_cast<unsigned long long>(st.mapped_reduces));
  return fails ? 1 : 0;
}

void all_to_all_check(Communicator& c, Dtype t, size_t cnt, const char* algo) {
  const int n = c.size(), r = c.rank();
  {  // all_to_all: the block for rank d carries (r, d)
    Buf in(t, cnt * n), out(t, cnt * n);
    for (int d = 0; d < n; ++d)
      for (size_t j = 0; j < cnt; ++j) in.set(d * cnt + j, tagval(r, d, j));
    c.all_to_all(in.data(), out.data(), cnt, t);
    const std::string w = name("all_to_all", t, cnt, algo);
    for (int s = 0; s < n; ++s)
      for (size_t j = 0; j < cnt; ++j) check(out, s * cnt + j, tagval(s, r, j), w, r);
  }
  {  // all_to_allv: rank a sends (a + 2b + cnt) % 5 * cnt / 4 elements to rank b
    auto amount = [&](int a, int b) { return size_t((a + 2 * b + cnt) % 5) * cnt / 4; };
    std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
    size_t st = 0, rt = 0;
    for (int d = 0; d < n; ++d) {
      sc[d] = amount(r, d), sd[d] = st, st += sc[d];
      rc[d] = amount(d, r), rd[d] = rt, rt += rc[d];
    }
    Buf in(t, st), out(t, rt);
    for (int d = 0; d < n; ++d)
      for (size_t j = 0; j < sc[d]; ++j) in.set(sd[d] + j, tagval(r, d, j));
    c.all_to_allv(in.data(), sc, sd, out.data(), rc, rd, t);
    const std::string w = name("all_to_allv", t, cnt, algo);
    for (int s = 0; s < n; ++s)
      for (size_t j = 0; j < rc[s]; ++j) check(out, rd[s] + j, tagval(s, r, j), w, r);
  }
}

int split_test(Communicator& c) {
  const int n = c.size(), r = c.rank();
  auto sub = c.split(r % 2, -r);  // reversed order inside each half
  const int members = (n - r % 2 + 1) / 2;
  if (sub->size() != members) {
    std::printf("FAIL split size %d, want %d\n", sub->size(), members);
    return 1;
  }
  int64_t v = r, sum = 0;
  sub->all_reduce(&v, &sum, 1, Dtype::kI64, ReduceOp::kSum);
  int64_t want = 0;
  for (int i = r % 2; i < n; i += 2) want += i;
  // Interleave an op on the parent to show the two sequence spaces stay apart.
  int64_t w = 1, total = 0;
  c.all_reduce(&w, &total, 1, Dtype::kI64, ReduceOp::kSum);
  int64_t first = -1;
  if (sub->rank() == 0) first = r;
  sub->broadcast(&first, 1, Dtype::kI64, 0);
  int expect_first = r % 2;
  for (int i = r % 2; i < n; i += 2) expect_first = i;  // highest rank of my color
  auto none = c.split(r == 0 ? 0 : -1, 0);
  if (sum != want || total != n || first != expect_first || (r != 0 && none) ||
      (r == 0 && (!none || none->size() != 1))) {
    std::printf("FAIL split rank %d: sum %lld want %lld, total %lld, first %lld want %d\n", r,
                (long long)sum, (long long)want, (long long)total, (long long)first,
                expect_first);
    return 1;
  }
  if (r == 0) std::printf("split ok\n");
  return 0;
}

int p2p_test(Communicator& c) {
  const int n = c.size(), r = c.rank();
  // Pass a token around the ring twice; rank 0 starts.
  int32_t tok = 0;
  for (int round = 0; round < 2; ++round) {
    if (r == 0) {
      c.send(&tok, 1, Dtype::kI32, 1 % n);
      c.recv(&tok, 1, Dtype::kI32, n - 1);
    } else {
      c.recv(&tok, 1, Dtype::kI32, r - 1);
      ++tok;
      c.send(&tok, 1, Dtype::kI32, (r + 1) % n);
    }
  }
  if (r == 0 && tok != 2 * (n - 1)) {
    std::printf("FAIL p2p token %d want %d\n", tok, 2 * (n - 1));
    return 1;
  }
  if (r == 0) std::printf("p2p ok\n");
  return 0;
}

// Rank 0 sends 24 MiB (many chunks, over every socket) to rank 1, which posts its receive
// `delay_ms` later: by then none, some or all of the chunks have come and wait in a stash, and
// some are half read. Every byte must land where it belongs.
int late_recv_test(Communicator& c) {
  const size_t count = (24u << 20) / 4 + 5;
  std::vector<int32_t> buf(count);
  for (int delay_ms : {0, 1, 3, 8, 30, 200}) {
    const auto want = [&](size_t i) { return int32_t(i * 7 + size_t(delay_ms)); };
    if (c.rank() == 0) {
      for (size_t i = 0; i < count; ++i) buf[i] = want(i);
      c.send(buf.data(), count, Dtype::kI32, 1);
    } else if (c.rank() == 1) {
      std::fill(buf.begin(), buf.end(), -1);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      c.recv(buf.data(), count, Dtype::kI32, 0);
      for (size_t i = 0; i < count; ++i) {
        if (buf[i] != want(i)) {
          std::printf("FAIL late_recv delay %d ms: element %zu is %d, want %d\n", delay_ms, i,
                      buf[i], want(i));
          return 1;
        }
      }
    }
    c.barrier();
  }
  if (c.rank() == 1) std::printf("late_recv ok\n");
  return 0;
}

// Buffers from Communicator::alloc that this process maps: its own and its peers'.
int mapped_alloc_buffers() {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return -1;
  char line[512];
  int n = 0;
  while (std::fgets(line, sizeof line, f)) n += std::strstr(line, "moe-comm-buffer") != nullptr;
  std::fclose(f);
  return n;
}

int churn_test(Communicator& c) {
  const int n = c.size(), r = c.rank();
  const size_t cnt = (1 << 20) / 4 + 5;  // big enough for single copy and the ring
  int bad = 0;
  for (int it = 0; it < 40; ++it) {
    // A fresh buffer each time, often at the address the last one had: peers must not read
    // through a stale mapping.
    CommBuffer b = c.alloc(cnt * 4);
    float* a = b.as<float>();
    for (size_t i = 0; i < cnt; ++i) a[i] = float(it * 1000 + r + int(i % 7));
    c.all_reduce(a, a, cnt, Dtype::kF32, ReduceOp::kSum);
    for (size_t i = 0; i < cnt; ++i) {
      const float want = float(n * (it * 1000 + int(i % 7)) + n * (n - 1) / 2);
      if (a[i] != want && bad++ < 5)
        std::printf("FAIL rank %d churn %d element %zu is %g, want %g\n", r, it, i, a[i], want);
    }
  }
  const ShmStats st = c.transport_stats();
  std::printf("churn: rank %d maps %d alloc buffers after 40, %llu mapped reduces, %d wrong\n", r,
              mapped_alloc_buffers(), static_cast<unsigned long long>(st.mapped_reduces), bad);
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "sweep";
  try {
    auto c = Communicator::from_env();
    const int r = c->rank();
    const char* reg = std::getenv("MOE_TEST_REGISTERED");
    if (reg && std::string(reg) == "1") g_alloc_from = c.get();
    if (mode == "sweep")
      return sweep(*c, argc > 2 ? std::stoul(argv[2]) : 0, argc > 3 ? std::stoul(argv[3]) : 0);
    if (mode == "split") return split_test(*c);
    if (mode == "compressed") return compressed_test(*c);
    if (mode == "p2p") return p2p_test(*c);
    if (mode == "late_recv") return late_recv_test(*c);
    if (mode == "churn") return churn_test(*c);
    if (mode == "async") {
      // Several operations in flight while the caller "computes", one blocking call between,
      // all in call order.
      const int n = c->size();
      std::vector<std::vector<float>> bufs(6, std::vector<float>(100003));
      std::vector<WorkPtr> ws;
      for (int i = 0; i < 6; ++i) {
        for (auto& x : bufs[i]) x = float(r + 1) * float(i + 1);
        ws.push_back(c->all_reduce_async(bufs[i].data(), bufs[i].data(), bufs[i].size(),
                                         Dtype::kF32, ReduceOp::kSum));
      }
      int64_t one = 1, total = 0;
      c->all_reduce(&one, &total, 1, Dtype::kI64, ReduceOp::kSum);  // waits behind the queue
      std::vector<int32_t> g(n);
      int32_t mine = r * 10;
      auto wg = c->all_gather_async(&mine, g.data(), 1, Dtype::kI32);
      for (auto& w : ws) w->wait();
      wg->wait();
      bool ok = total == n;
      for (int i = 0; i < 6; ++i)
        for (float x : bufs[i]) ok &= x == float(n * (n + 1) / 2 * (i + 1));
      for (int i = 0; i < n; ++i) ok &= g[i] == i * 10;
      std::printf("async %s on rank %d\n", ok ? "ok" : "FAIL", r);
      return ok ? 0 : 1;
    }
    if (mode == "topology") {
      // Host topology from MOE_HOST_ID, and the time of a barrier (crosses hosts).
      c->barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < 3; ++i) c->barrier();
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / 3;
      std::printf("topology rank %d: hosts %d, local %d of %d, barrier %.2f ms\n", r,
                  c->num_hosts(), c->local_rank(), c->local_size(), ms);
      return 0;
    }
    if (mode == "hier_vs_ring") {
      // Best of three timed f32 all_reduces (the slowest rank's time) per algorithm, each
      // result checked.
      const size_t cnt = (argc > 2 ? std::stoul(argv[2]) : 8 << 20) / 4;
      const int n = c->size();
      std::vector<float> a(cnt);
      auto best_ms = [&](const char* algo) {
        c->set_algo(algo);
        double best = 1e30;
        for (int it = 0; it < 4; ++it) {
          for (size_t i = 0; i < cnt; ++i) a[i] = float(contrib(r, i));
          c->barrier();
          const auto t0 = Clock::now();
          c->all_reduce(a.data(), a.data(), cnt, Dtype::kF32, ReduceOp::kSum);
          double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          c->all_reduce(&ms, &ms, 1, Dtype::kF64, ReduceOp::kMax);
          if (it > 0) best = std::min(best, ms);  // the first is a warmup
          for (size_t i = 0; i < cnt; ++i)
            if (a[i] != float(expect_reduce(n, i, ReduceOp::kSum))) ++g_fail;
        }
        return best;
      };
      const double ring = best_ms("ring"), hier = best_ms("hier");
      if (r == 0)
        std::printf("hier_vs_ring: hosts %d, ring %.1f ms, hier %.1f ms, %d wrong\n",
                    c->num_hosts(), ring, hier, g_fail);
      return g_fail ? 1 : 0;
    }
    if (mode == "hello") {
      float x = 1;
      c->all_reduce(&x, &x, 1, Dtype::kF32, ReduceOp::kSum);
      c->barrier();
      std::printf("hello from rank %d of %d: sum %g, hosts %d, transport %s\n", r, c->size(), x,
                  c->num_hosts(), c->transport_info().c_str());
      return x == c->size() ? 0 : 1;
    }
    if (mode == "loop") {
      const size_t count = (argc > 2 ? std::stoul(argv[2]) : 8 << 20) / 4;
      Mem mem(count * 4);
      float* a = reinterpret_cast<float*>(mem.data());
      std::fill(a, a + count, 1.0f);
      for (long it = 0;; ++it) {
        c->all_reduce(a, a, count, Dtype::kF32, ReduceOp::kAvg);
        if (it == 0) {
          if (r == 0) std::printf("transport %s\n", c->transport_info().c_str());
          std::printf("loop started\n");
          std::fflush(stdout);
        }
      }
    }
    if (mode == "mismatch") {
      const std::string kind = argc > 2 ? argv[2] : "kind";
      std::vector<float> a(4096, 1.0f), b(4096 * c->size());
      c->barrier();
      if (r == 1 && kind == "kind") c->all_gather(a.data(), b.data(), 1024, Dtype::kF32);
      else if (r == 1 && kind == "size") c->all_reduce(a.data(), a.data(), 2048, Dtype::kF32, ReduceOp::kSum);
      else c->all_reduce(a.data(), a.data(), 1024, Dtype::kF32, ReduceOp::kSum);
      std::printf("mismatch not detected on rank %d\n", r);
      return 0;
    }
    if (mode == "stall") {
      const double s = argc > 2 ? std::stod(argv[2]) : 5;
      if (r == 1) std::this_thread::sleep_for(std::chrono::duration<double>(s));
      float x = 1;
      c->all_reduce(&x, &x, 1, Dtype::kF32, ReduceOp::kSum);
      return 0;
    }
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 3;
  }
}
