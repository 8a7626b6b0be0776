// Thin POSIX socket helpers: every blocking call takes a deadline, every failure throws an
// Error that says which peer and what to check.
#pragma once

#include <string>

#include "comm/common.h"

namespace moe::comm {

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() {
    const int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset();
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Listens on host:port (host "" or "0.0.0.0" = every interface, port 0 = any free port).
Fd listen_tcp(const std::string& host, int port, int* bound_port, int backlog = 1024);
// Connects, retrying while the listener is not up yet, until `deadline`.
Fd connect_tcp(const std::string& host, int port, Deadline deadline, const std::string& what);
// Accepts one connection, or returns an empty Fd when `deadline` passes.
Fd accept_tcp(int listen_fd, Deadline deadline, std::string* peer_addr);

void write_all(int fd, const void* buf, size_t n, Deadline deadline, const std::string& what);
void read_all(int fd, void* buf, size_t n, Deadline deadline, const std::string& what);

void set_nonblocking(int fd, bool on);
void set_nodelay(int fd);
void set_buffer_sizes(int fd, int bytes);
// TCP congestion control of a socket (TCP_CONGESTION): set_congestion_control returns "" or
// why the kernel refused; congestion_control returns the name in use ("" if unknown).
std::string set_congestion_control(int fd, const std::string& name);
std::string congestion_control(int fd);
// The names an unprivileged process may choose here (/proc/sys/net/ipv4/...).
std::string allowed_congestion_controls();
// Tries `name` on a spare socket; if the kernel refuses it, fails naming `setting`, why, and
// what this host allows.
void require_congestion_control(const std::string& name, const char* setting);
// The local IP address of a connected socket: what other ranks should dial to reach us.
std::string local_ip(int fd);
std::string peer_name(int fd);

}  // namespace moe::comm
