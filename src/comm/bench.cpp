#include "comm/bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace moe::comm {

namespace {

void store_value(void* buf, size_t i, Dtype t, double v) {
  char* b = static_cast<char*>(buf);
  switch (t) {
    case Dtype::kF32: reinterpret_cast<float*>(b)[i] = float(v); return;
    case Dtype::kF64: reinterpret_cast<double*>(b)[i] = v; return;
    case Dtype::kI32: reinterpret_cast<int32_t*>(b)[i] = int32_t(v); return;
    case Dtype::kI64: reinterpret_cast<int64_t*>(b)[i] = int64_t(v); return;
    case Dtype::kBF16: {
      float f = float(v);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      reinterpret_cast<uint16_t*>(b)[i] = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
      return;
    }
    case Dtype::kF16: {
      const _Float16 h = static_cast<_Float16>(float(v));
      std::memcpy(b + 2 * i, &h, 2);
      return;
    }
    default: return;
  }
}

double load_value(const void* buf, size_t i, Dtype t) {
  const char* b = static_cast<const char*>(buf);
  switch (t) {
    case Dtype::kF32: return reinterpret_cast<const float*>(b)[i];
    case Dtype::kF64: return reinterpret_cast<const double*>(b)[i];
    case Dtype::kI32: return reinterpret_cast<const int32_t*>(b)[i];
    case Dtype::kI64: return double(reinterpret_cast<const int64_t*>(b)[i]);
    case Dtype::kBF16: {
      const uint32_t u = uint32_t(reinterpret_cast<const uint16_t*>(b)[i]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case Dtype::kF16: {
      _Float16 h;
      std::memcpy(&h, b + 2 * i, 2);
      return float(h);
    }
    default: return 0;
  }
}

// Small integers, exact in every type: rank r contributes (r+1)*(i%5+1).
double contrib(int r, size_t i) { return double((r + 1) * int(i % 5 + 1)); }
double reduced(int n, size_t i, ReduceOp op) {
  const double k = double(i % 5 + 1);
  switch (op) {
    case ReduceOp::kSum: return k * n * (n + 1) / 2;
    case ReduceOp::kAvg: return k * (n + 1) / 2.0;
    case ReduceOp::kMax: return k * n;
    case ReduceOp::kMin: return k;
  }
  return 0;
}
double tagval(int a, int b, size_t j) { return double(a * 8 + b % 8 + (j % 4) * 64); }

}  // namespace

uint64_t parse_bytes(const std::string& s) {
  MOE_CHECK(!s.empty(), "comm-bench", "empty size");
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    MOE_FAIL("comm-bench", "size '", s, "' is not a number like 4K, 64M or 1G");
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = char(std::toupper(ch));
  double mul = 1;
  if (unit == "" || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mul = 1024;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else MOE_FAIL("comm-bench", "size '", s, "' has an unknown unit: use K, M or G");
  MOE_CHECK(v >= 0, "comm-bench", "size '", s, "' is negative");
  return static_cast<uint64_t>(v * mul);
}

std::string bench_header(const BenchOptions& opt, int world) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "# moe comm-bench: %s, %d ranks, %s, %s, algo %s%s%s, %s buffers, %d warmup + %d "
                "timed iters\n"
                "#%12s %12s %8s %6s %10s %8s %8s %7s\n#%12s %12s %8s %6s %10s %8s %8s %7s",
                opt.op.c_str(), world, comm_dtype_name(opt.dtype), reduce_op_name(opt.redop),
                opt.algo.empty() ? "auto" : opt.algo.c_str(),
                opt.algo_a2a.empty() ? "" : ", algo-a2a ", opt.algo_a2a.c_str(),
                opt.registered ? "registered (Communicator::alloc)" : "heap", opt.warmup, opt.iters,
                "size", "count", "type", "redop", "time", "algbw", "busbw", "#wrong", "(B)",
                "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "");
  return buf;
}

std::string bench_row_text(const BenchOptions& opt, const BenchRow& r) {
  char buf[256];
  const bool reduces = opt.op == "all_reduce" || opt.op == "reduce_scatter";
  std::snprintf(buf, sizeof buf, " %12llu %12llu %8s %6s %10.1f %8.3f %8.3f %7lld",
                static_cast<unsigned long long>(r.bytes),
                static_cast<unsigned long long>(r.count), comm_dtype_name(opt.dtype),
                reduces ? reduce_op_name(opt.redop) : "none", r.time_us, r.algbw, r.busbw,
                static_cast<long long>(r.wrong));
  return buf;
}

void run_bench(Communicator& c, const BenchOptions& opt,
               const std::function<void(const BenchRow&)>& on_row) {
  const int n = c.size(), me = c.rank();
  const Dtype t = opt.dtype;
  const size_t es = comm_dtype_size(t);
  check_dtype_op(t, opt.redop, "comm-bench");
  MOE_CHECK(opt.factor > 1, "comm-bench", "--factor must be above 1");
  MOE_CHECK(opt.iters >= 1, "comm-bench", "--iters must be at least 1");
  c.set_algo(opt.algo);
  if (!opt.algo_a2a.empty()) c.set_algo_a2a(opt.algo_a2a);  // else MOE_COMM_ALGO_A2A or auto
  const std::string& op = opt.op;
  const bool per_rank_blocks = op == "all_gather" || op == "reduce_scatter" || op == "all_to_all";
  MOE_CHECK(op == "all_reduce" || op == "broadcast" || per_rank_blocks, "comm-bench",
            "unknown --op '", op, "': use all_reduce, all_gather, reduce_scatter, all_to_all or "
            "broadcast");
  enum class Op { kAllReduce, kAllGather, kReduceScatter, kAllToAll, kBroadcast };
  const Op k = op == "all_reduce"       ? Op::kAllReduce
               : op == "all_gather"     ? Op::kAllGather
               : op == "reduce_scatter" ? Op::kReduceScatter
               : op == "all_to_all"     ? Op::kAllToAll
                                        : Op::kBroadcast;
  double bus_factor = 1;
  if (k == Op::kAllReduce) bus_factor = 2.0 * (n - 1) / n;
  else if (per_rank_blocks) bus_factor = double(n - 1) / n;

  // Heap memory, or Communicator::alloc's (--registered).
  struct Buf {
    std::vector<char> heap;
    CommBuffer reg;
    char* p = nullptr;
    size_t n = 0;
    void assign(Communicator& c, bool registered, size_t bytes) {
      n = bytes;
      if (registered) {
        if (!reg.data() || reg.size() != bytes) reg = c.alloc(bytes);
        std::memset(reg.data(), 0, bytes);
        p = reg.as<char>();
      } else {
        heap.assign(bytes, 0);
        p = heap.data();
      }
    }
    char* data() { return p; }
    size_t size() const { return n; }
  } in, out;
  for (double bytes_d = double(std::max<uint64_t>(opt.min_bytes, es));;
       bytes_d = std::ceil(bytes_d * opt.factor)) {
    uint64_t bytes = static_cast<uint64_t>(bytes_d);
    if (bytes > opt.max_bytes) break;
    // Whole elements, and whole per-rank blocks where the op has them (as nccl-tests rounds).
    const uint64_t unit = per_rank_blocks ? es * n : es;
    bytes = std::max<uint64_t>(unit, bytes / unit * unit);
    const size_t count = bytes / es;        // elements in the "size" buffer
    const size_t block = per_rank_blocks ? count / n : count;
    in.assign(c, opt.registered, k == Op::kAllGather ? block * es : bytes);
    out.assign(c, opt.registered, k == Op::kReduceScatter ? block * es : bytes);
    auto call = [&] {
      if (k == Op::kAllReduce) c.all_reduce(in.data(), out.data(), count, t, opt.redop);
      else if (k == Op::kAllGather) c.all_gather(in.data(), out.data(), block, t);
      else if (k == Op::kReduceScatter) c.reduce_scatter(in.data(), out.data(), block, t, opt.redop);
      else if (k == Op::kAllToAll) c.all_to_all(in.data(), out.data(), block, t);
      else c.broadcast(out.data(), count, t, 0);
    };
    for (int i = 0; i < opt.warmup; ++i) call();
    c.barrier();
    const auto t0 = Clock::now();
    for (int i = 0; i < opt.iters; ++i) call();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count() / opt.iters;
    c.all_reduce(&secs, &secs, 1, Dtype::kF64, ReduceOp::kMax);

    int64_t wrong = 0;
    if (opt.check) {
      const size_t nin = in.size() / es;
      for (size_t i = 0; i < nin; ++i) {
        if (k == Op::kAllToAll) store_value(in.data(), i, t, tagval(me, int(i / block), i % block));
        else if (k == Op::kAllGather) store_value(in.data(), i, t, tagval(me, 0, i));
        else store_value(in.data(), i, t, contrib(me, i));
      }
      if (k == Op::kBroadcast)
        for (size_t i = 0; i < count; ++i)
          store_value(out.data(), i, t, me == 0 ? tagval(0, 1, i) : -1);
      call();
      for (size_t i = 0; i < out.size() / es; ++i) {
        double want = 0;
        if (k == Op::kAllReduce) want = reduced(n, i, opt.redop);
        else if (k == Op::kReduceScatter) want = reduced(n, me * block + i, opt.redop);
        else if (k == Op::kAllGather) want = tagval(int(i / block), 0, i % block);
        else if (k == Op::kAllToAll) want = tagval(int(i / block), me, i % block);
        else want = tagval(0, 1, i);
        wrong += load_value(out.data(), i, t) != want;
      }
      c.all_reduce(&wrong, &wrong, 1, Dtype::kI64, ReduceOp::kSum);
    }
    BenchRow row;
    row.bytes = bytes;
    row.count = count;
    row.time_us = secs * 1e6;
    row.algbw = double(bytes) / secs / 1e9;
    row.busbw = row.algbw * bus_factor;
    row.wrong = wrong;
    on_row(row);
  }
}

}  // namespace moe::comm
