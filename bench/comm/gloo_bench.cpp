// Gloo over its TCP transport, measured exactly as `moe comm-bench` measures ours
// (bench_common.h): f32 sum, warmup calls, a barrier, the mean of the timed calls on the
// slowest rank, then one checked call.
//   all_reduce  --algo ring:          gloo::AllreduceRing (every rank passes the whole buffer
//                                     around the ring: n-1 steps of `size` bytes)
//               --algo ring_chunked:  gloo::AllreduceRingChunked (reduce-scatter + all-gather
//                                     in chunks: the bandwidth-optimal ring)
//   all_to_all  gloo::alltoall
// Gloo's ring all_reduce works in place; we time it in place (no copy of the input per call,
// which favours Gloo by one memcpy per call). Ranks come from `moe launch` (MOE_RANK,
// MOE_WORLD_SIZE) or mpirun (OMPI_COMM_WORLD_*); they meet through Gloo's FileStore in --store,
// a directory that must be fresh for each run. Connections use 127.0.0.1 unless
// GLOO_BENCH_ADDR names another local address.
// usage: moe launch --nproc-per-node N -- gloo_bench --op all_reduce|all_to_all
//        [--algo ring|ring_chunked] --store DIR [--sizes 4M,64M] [--iters 10] [--warmup 3]
#include <gloo/allreduce_ring.h>
#include <gloo/allreduce_ring_chunked.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <memory>

#include "bench_common.h"

using namespace moe_cbench;

namespace {

const char* kUsage =
    "usage: moe launch --nproc-per-node N -- gloo_bench --op all_reduce|all_to_all "
    "[--algo ring|ring_chunked] --store DIR [--sizes 4M,64M] [--iters 10] [--warmup 3]\n";

int env_int(const char* a, const char* b) {
  const char* v = std::getenv(a);
  if (!v) v = std::getenv(b);
  if (!v) {
    std::fprintf(stderr, "gloo_bench: neither %s nor %s is set: start it with moe launch or "
                 "mpirun\n", a, b);
    std::exit(2);
  }
  return std::atoi(v);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv, kUsage);
  if (a.op == "all_reduce" && a.algo.empty()) a.algo = "ring_chunked";
  if (a.store.empty() ||
      (a.op == "all_reduce" && a.algo != "ring" && a.algo != "ring_chunked")) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  const int me = env_int("MOE_RANK", "OMPI_COMM_WORLD_RANK");
  const int n = env_int("MOE_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE");

  gloo::transport::tcp::attr attr;
  const char* addr = std::getenv("GLOO_BENCH_ADDR");
  attr.hostname = addr ? addr : "127.0.0.1";
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(a.store);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(me, n);
  ctx->setTimeout(std::chrono::seconds(300));
  ctx->connectFullMesh(store, dev);
  std::shared_ptr<gloo::Context> c = ctx;

  auto barrier = [&] {
    gloo::BarrierOptions bo(c);
    gloo::barrier(bo);
  };
  // The slowest rank's time and the sum of #wrong, through Gloo itself.
  auto max_over_ranks = [&](double v) {
    std::vector<double*> p{&v};
    gloo::AllreduceRing<double> r(c, p, 1, gloo::ReductionFunction<double>::max);
    r.run();
    return v;
  };

  if (me == 0) print_header("gloo_bench (Gloo, tcp)", a, n);
  long long total_wrong = 0;
  for (const uint64_t bytes : parse_sizes(a.sizes)) {
    const size_t count = element_count(bytes, a.op, n);
    std::vector<float> in(count, 0.f), out(count, 0.f);
    std::unique_ptr<gloo::Algorithm> ring;
    std::unique_ptr<gloo::AlltoallOptions> a2a;
    if (a.op == "all_reduce") {
      std::vector<float*> ptrs{out.data()};
      if (a.algo == "ring") ring = std::make_unique<gloo::AllreduceRing<float>>(c, ptrs, int(count));
      else ring = std::make_unique<gloo::AllreduceRingChunked<float>>(c, ptrs, int(count));
    } else {
      a2a = std::make_unique<gloo::AlltoallOptions>(c);
      a2a->setInput(in.data(), count);
      a2a->setOutput(out.data(), count);
    }
    auto call = [&] {
      if (ring) ring->run();
      else gloo::alltoall(*a2a);
    };
    for (int i = 0; i < a.warmup; ++i) call();
    barrier();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.iters; ++i) call();
    const double secs = max_over_ranks(seconds_since(t0) / a.iters);

    fill_input(in, a.op, me, n);
    if (ring) std::memcpy(out.data(), in.data(), count * sizeof(float));
    call();
    const long long wrong = (long long)(max_over_ranks(double(count_wrong(out, a.op, me, n))));
    total_wrong += wrong;
    if (me == 0) print_row(a, n, count, secs, wrong);
  }
  barrier();
  return total_wrong ? 1 : 0;
}
