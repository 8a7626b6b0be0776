// `moe launch` and `moe comm-bench`: thin wrappers over moe::comm (src/comm).
//   moe launch --nproc-per-node 4 [--nnodes 2 --node-rank 0 --master-addr A --master-port P]
//   [--max-restarts 2] -- CMD...
//   moe comm-bench --op all_reduce --min-bytes 1K --max-bytes 64M [--nproc 4] [--dtype f32]
//   [--algo ring] [--algo-a2a two_level]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "comm/bench.h"
#include "comm/communicator.h"
#include "comm/launcher.h"

namespace {

using namespace moe::comm;

bool under_a_launcher() {
  return !env_str("MOE_RANK").empty() || !env_str("RANK").empty() ||
         !env_str("OMPI_COMM_WORLD_RANK").empty() || !env_str("SLURM_PROCID").empty();
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  MOE_CHECK(n > 0, "comm-bench", "cannot find this program's path in /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

struct BenchArgs {
  BenchOptions opt;
  std::string min_bytes = "1K", max_bytes = "64M", dtype = "f32", redop = "sum";
  std::string transport;  // empty: MOE_COMM_TRANSPORT as set, else auto
  int nproc = 2;
};

void run_comm_bench(const BenchArgs& a) {
  BenchOptions opt = a.opt;
  opt.min_bytes = parse_bytes(a.min_bytes);
  opt.max_bytes = parse_bytes(a.max_bytes);
  opt.dtype = parse_comm_dtype(a.dtype);
  opt.redop = parse_reduce_op(a.redop);
  // The transport is read from the environment when the communicator starts; the launcher's
  // ranks inherit ours.
  if (!a.transport.empty()) setenv("MOE_COMM_TRANSPORT", a.transport.c_str(), 1);
  if (!under_a_launcher()) {
    // Not started by a launcher: start --nproc copies of ourselves on this host.
    LaunchOptions lo;
    lo.nproc_per_node = a.nproc;
    lo.cmd = {self_exe(),    "comm-bench",
              "--op",        opt.op,
              "--min-bytes", a.min_bytes,
              "--max-bytes", a.max_bytes,
              "--factor",    std::to_string(opt.factor),
              "--dtype",     a.dtype,
              "--redop",     a.redop,
              "--iters",     std::to_string(opt.iters),
              "--warmup",    std::to_string(opt.warmup)};
    if (!opt.algo.empty()) lo.cmd.insert(lo.cmd.end(), {"--algo", opt.algo});
    if (!opt.algo_a2a.empty()) lo.cmd.insert(lo.cmd.end(), {"--algo-a2a", opt.algo_a2a});
    if (!opt.check) lo.cmd.push_back("--no-check");
    if (opt.registered) lo.cmd.push_back("--registered");
    lo.on_line = [](int r, const std::string& line, bool is_err) {
      std::FILE* f = is_err ? stderr : stdout;
      if (r == 0 && !is_err)
        std::fprintf(f, "%s\n", line.c_str());
      else
        std::fprintf(f, "[%d] %s\n", r, line.c_str());
      std::fflush(f);
    };
    const LaunchResult res = launch(lo);
    if (res.exit_code) throw CLI::RuntimeError(res.exit_code);
    return;
  }
  auto c = Communicator::from_env();
  if (c->rank() == 0)
    std::printf("# transport: %s\n%s\n", c->transport_info().c_str(),
                bench_header(opt, c->size()).c_str());
  int64_t wrong = 0;
  run_bench(*c, opt, [&](const BenchRow& row) {
    wrong += row.wrong;
    if (c->rank() == 0) {
      std::printf("%s\n", bench_row_text(opt, row).c_str());
      std::fflush(stdout);
    }
  });
  const ShmStats st = c->transport_stats();
  if (c->rank() == 0 && st.cma_reads + st.mapped_reads + st.mapped_reduces)
    std::printf(
        "# rank 0 shm single copy: %llu by process_vm_readv, %llu copied from mapped "
        "buffers, %llu reduced from mapped buffers (%llu maps)\n",
        static_cast<unsigned long long>(st.cma_reads),
        static_cast<unsigned long long>(st.mapped_reads),
        static_cast<unsigned long long>(st.mapped_reduces),
        static_cast<unsigned long long>(st.maps));
  if (wrong) {
    if (c->rank() == 0)
      std::fprintf(stderr, "moe comm-bench: %lld wrong elements\n", static_cast<long long>(wrong));
    throw CLI::RuntimeError(1);
  }
}

}  // namespace

void add_comm_commands(CLI::App& app) {
  auto lo = std::make_shared<LaunchOptions>();
  auto* la = app.add_subcommand(
      "launch",
      "start N ranks of a command on this node with the rendezvous environment (MOE_RANK, "
      "MOE_WORLD_SIZE, MOE_MASTER_ADDR/PORT, a fresh MOE_JOB_TOKEN); output is prefixed with "
      "the rank; when a rank fails the others are stopped and its exit code is returned (or, "
      "with --max-restarts, the whole job is started again)");
  la->add_option("--nproc-per-node", lo->nproc_per_node, "ranks on this node")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  la->add_option("--nnodes", lo->nnodes, "nodes in the job")->capture_default_str();
  la->add_option("--node-rank", lo->node_rank, "this node's index, 0..nnodes-1")
      ->capture_default_str();
  la->add_option("--master-addr", lo->master_addr, "address of node 0 (hosts the store)")
      ->capture_default_str();
  la->add_option("--master-port", lo->master_port,
                 "store port on node 0 (0: any free port, one node only)")
      ->capture_default_str();
  la->add_option("--max-restarts", lo->max_restarts,
                 "start the whole job again (fresh rendezvous, MOE_RESTART_COUNT=1, 2, ...) up to "
                 "this many times when a rank fails; not after SIGINT/SIGTERM; one node only")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  la->add_option("command", lo->cmd, "the command each rank runs, after --")->required();
  la->callback([lo] {
    const LaunchResult r = launch(*lo);
    if (r.exit_code) throw CLI::RuntimeError(r.exit_code);
  });

  auto ba = std::make_shared<BenchArgs>();
  auto* cb = app.add_subcommand(
      "comm-bench",
      "collective bandwidth in nccl-tests' columns (size count type redop time algbw busbw "
      "#wrong); starts --nproc ranks itself unless run under moe launch, torchrun, mpirun or srun");
  cb->add_option("--op", ba->opt.op,
                 "all_reduce, all_gather, reduce_scatter, all_to_all, broadcast")
      ->capture_default_str();
  cb->add_option("--min-bytes", ba->min_bytes, "smallest size (K, M, G suffixes)")
      ->capture_default_str();
  cb->add_option("--max-bytes", ba->max_bytes, "largest size")->capture_default_str();
  cb->add_option("--factor", ba->opt.factor, "size step")->capture_default_str();
  cb->add_option("--dtype", ba->dtype, "f32, f64, bf16, f16, i32, i64")->capture_default_str();
  cb->add_option("--redop", ba->redop, "sum, avg, max, min")->capture_default_str();
  cb->add_option("--algo", ba->opt.algo,
                 "all_reduce algorithm: ring, rhd, hier or direct (default by size and topology)");
  cb->add_option("--algo-a2a", ba->opt.algo_a2a,
                 "all_to_all algorithm: pairwise or two_level (default: MOE_COMM_ALGO_A2A, "
                 "else by topology)");
  cb->add_option("--transport", ba->transport,
                 "auto, shm or tcp (sets MOE_COMM_TRANSPORT; default: as set, else auto)")
      ->check(CLI::IsMember({"auto", "shm", "tcp"}));
  cb->add_option("--iters", ba->opt.iters, "timed iterations per size")->capture_default_str();
  cb->add_option("--warmup", ba->opt.warmup, "untimed iterations per size")->capture_default_str();
  cb->add_flag("!--no-check", ba->opt.check, "skip the #wrong check");
  cb->add_flag("--registered", ba->opt.registered,
               "in and out buffers from Communicator::alloc, which ranks on this host map "
               "(like nccl-tests -R 1)");
  cb->add_option("--nproc", ba->nproc, "ranks to start when not under a launcher")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cb->callback([ba] { run_comm_bench(*ba); });
}
