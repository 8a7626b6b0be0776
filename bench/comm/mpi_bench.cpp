// Open MPI's MPI_Allreduce / MPI_Alltoall, measured exactly as `moe comm-bench` measures ours
// (bench_common.h): f32, sum, out of place, warmup calls, a barrier, then the mean of the
// timed calls on the slowest rank, and one checked call. compare.sh runs it twice per round:
// with Open MPI's defaults (one host: its shared-memory path) and with TCP forced
// (--mca pml ob1 --mca btl tcp,self).
// usage: mpirun -np N mpi_bench --op all_reduce|all_to_all [--sizes 4M,64M] [--iters 10]
//        [--warmup 3]
#include <mpi.h>

#include "bench_common.h"

using namespace moe_cbench;

namespace {

const char* kUsage =
    "usage: mpirun -np N mpi_bench --op all_reduce|all_to_all [--sizes 4M,64M] [--iters 10] "
    "[--warmup 3]\n";

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const Args a = parse_args(argc, argv, kUsage);
  if (me == 0) print_header("mpi_bench (Open MPI)", a, n);
  long long total_wrong = 0;
  for (const uint64_t bytes : parse_sizes(a.sizes)) {
    const size_t count = element_count(bytes, a.op, n);
    const int block = int(count / size_t(n));
    std::vector<float> in(count, 0.f), out(count, 0.f);
    auto call = [&] {
      if (a.op == "all_reduce")
        MPI_Allreduce(in.data(), out.data(), int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      else
        MPI_Alltoall(in.data(), block, MPI_FLOAT, out.data(), block, MPI_FLOAT, MPI_COMM_WORLD);
    };
    for (int i = 0; i < a.warmup; ++i) call();
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    for (int i = 0; i < a.iters; ++i) call();
    double secs = (MPI_Wtime() - t0) / a.iters;
    MPI_Allreduce(MPI_IN_PLACE, &secs, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);

    fill_input(in, a.op, me, n);
    call();
    long long wrong = count_wrong(out, a.op, me, n);
    MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    total_wrong += wrong;
    if (me == 0) print_row(a, n, count, secs, wrong);
  }
  MPI_Finalize();
  return total_wrong ? 1 : 0;
}
