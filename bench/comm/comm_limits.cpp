// The ceilings for collectives on this host, measured in one run (DESIGN.md section 4: a
// benchmark prints ratios, it never gates CI):
//   memcpy       one thread copying a buffer of SIZE: the shared-memory transport's ceiling
//   memcpy-all   one such copy on every core at once, summed: what the host's memory moves
//                when every rank copies. On one host an all_to_all of SIZE bytes per rank
//                copies n*SIZE bytes in all (each rank its own block and n-1 received ones),
//                so its busbw cannot pass memcpy-all * (n-1)/n^2 (printed for n = 2, 4, 8)
//   stream-all   the same with moe::comm's copy_block (non-temporal stores: no read of the
//                destination first), which all_to_all uses from 1 MiB; the bound above with
//                the larger of the two
//   cma          process_vm_readv of SIZE from another process (a forked child's buffer):
//                the ceiling of the shared-memory transport's single-copy path
//   loopback tcp one stream between two threads through the kernel, with moe::comm's socket
//                options (TCP_NODELAY, big buffers): the TCP transport's ceiling per link
// usage: comm_limits [SIZE, default 64M] [SECONDS per measurement, default 1]
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "comm/bench.h"
#include "comm/socket.h"
#include "core/format.h"

using namespace moe::comm;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double memcpy_gbps(size_t bytes, double budget) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::memcpy(b.data(), a.data(), bytes);  // fault the pages in first
  size_t moved = 0;
  const auto t0 = Clock::now();
  while (seconds_since(t0) < budget) {
    std::memcpy(b.data(), a.data(), bytes);
    moved += bytes;
  }
  return double(moved) / seconds_since(t0) / 1e9;
}

// `threads` copies of memcpy_gbps' loop at once, each on its own buffers: the sum. `stream`:
// copy with copy_block's non-temporal stores instead of memcpy.
double memcpy_all_gbps(size_t bytes, double budget, int threads, bool stream) {
  auto copy = [stream](void* d, const void* s, size_t n) {
    if (stream)
      copy_block(d, s, n, /*stream_min=*/1);
    else
      std::memcpy(d, s, n);
  };
  std::vector<std::vector<char>> a(threads), b(threads);
  for (int t = 0; t < threads; ++t) a[t].assign(bytes, 1), b[t].assign(bytes, 0);
  std::vector<size_t> moved(threads, 0);
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  Clock::time_point t0;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::memcpy(b[t].data(), a[t].data(), bytes);
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      const auto start = Clock::now();
      if (t == 0) t0 = start;
      while (seconds_since(start) < budget) {
        copy(b[t].data(), a[t].data(), bytes);
        moved[t] += bytes;
      }
    });
  }
  for (auto& th : pool) th.join();
  const double secs = seconds_since(t0);
  size_t total = 0;
  for (size_t m : moved) total += m;
  return double(total) / secs / 1e9;
}

// Reads a buffer of `bytes` out of a forked child (which only sleeps) with process_vm_readv,
// as a receiver of the single-copy path does; 0 if the kernel refuses (see `why`).
double cma_gbps(size_t bytes, double budget, std::string* why) {
  std::vector<char> theirs(bytes, 3), mine(bytes, 0);
  const pid_t child = fork();
  if (child == 0) {
    pause();  // until killed; its copy of `theirs` is what the parent reads
    _exit(0);
  }
  if (child < 0) {
    *why = std::string("fork: ") + std::strerror(errno);
    return 0;
  }
  size_t moved = 0;
  double secs = 0;
  bool ok = true;
  for (int warm = 1; ok && (warm || secs < budget); warm = 0) {
    const auto t0 = Clock::now();
    do {
      iovec local{mine.data(), bytes}, remote{theirs.data(), bytes};
      const ssize_t n = process_vm_readv(child, &local, 1, &remote, 1, 0);
      if (n != ssize_t(bytes)) {
        *why = std::string("process_vm_readv: ") + (n < 0 ? std::strerror(errno) : "short read");
        ok = false;
        break;
      }
      if (!warm) moved += bytes;
    } while (!warm && seconds_since(t0) < budget);
    if (!warm) secs = seconds_since(t0);
  }
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  return ok && secs > 0 ? double(moved) / secs / 1e9 : 0;
}

double loopback_gbps(size_t chunk, double budget) {
  int port = 0;
  Fd lfd = listen_tcp("127.0.0.1", 0, &port);
  std::atomic<bool> stop{false};
  size_t received = 0;
  std::thread rx([&] {
    Fd c = accept_tcp(lfd.get(), deadline_after(10), nullptr);
    std::vector<char> buf(chunk);
    while (true) {
      const ssize_t r = ::recv(c.get(), buf.data(), buf.size(), 0);
      if (r <= 0) break;
      received += size_t(r);
    }
  });
  Fd tx = connect_tcp("127.0.0.1", port, deadline_after(10), "loopback");
  set_nodelay(tx.get());
  set_buffer_sizes(tx.get(), 4 << 20);
  std::vector<char> buf(chunk, 7);
  const auto t0 = Clock::now();
  while (seconds_since(t0) < budget)
    write_all(tx.get(), buf.data(), buf.size(), deadline_after(10), "loopback");
  const double secs = seconds_since(t0);
  tx.reset();
  rx.join();
  return double(received) / secs / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t bytes = argc > 1 ? parse_bytes(argv[1]) : (64u << 20);
  const double budget = argc > 2 ? std::atof(argv[2]) : 1.0;
  std::printf("# comm_limits: %s buffers, %.1f s per measurement\n",
              moe::human_bytes(double(bytes)).c_str(), budget);
  std::printf("memcpy        %8.2f GB/s\n", memcpy_gbps(bytes, budget));
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const double all = memcpy_all_gbps(bytes, budget, cores, /*stream=*/false);
  std::printf("memcpy-all    %8.2f GB/s (%d copies at once, summed)\n", all, cores);
  const double st = memcpy_all_gbps(bytes, budget, cores, /*stream=*/true);
  std::printf(
      "stream-all    %8.2f GB/s (the same with non-temporal stores; all_to_all busbw on "
      "one host at most",
      st);
  for (int n : {2, 4, 8}) std::printf(" %.2f (%d ranks)", std::max(all, st) * (n - 1) / (n * n), n);
  std::printf(")\n");
  std::string why;
  const double cma = cma_gbps(bytes, budget, &why);
  if (cma > 0)
    std::printf("cma           %8.2f GB/s (process_vm_readv from another process)\n", cma);
  else
    std::printf("cma           not available here (%s)\n", why.c_str());
  std::printf("loopback tcp  %8.2f GB/s (one stream, 4 MiB writes)\n",
              loopback_gbps(4u << 20, budget));
  return 0;
}
