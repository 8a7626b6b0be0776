// The ceilings for collectives on this host, measured in one run (DESIGN.md section 4: a
// benchmark prints ratios, it never gates CI):
//   memcpy       one thread copying a buffer of SIZE: the shared-memory transport's ceiling
//   loopback tcp one stream between two threads through the kernel, with moe::comm's socket
//                options (TCP_NODELAY, big buffers): the TCP transport's ceiling per link
// usage: comm_limits [SIZE, default 64M] [SECONDS per measurement, default 1]
#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
  std::printf("loopback tcp  %8.2f GB/s (one stream, 4 MiB writes)\n",
              loopback_gbps(4u << 20, budget));
  return 0;
}
