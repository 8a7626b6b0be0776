#include "comm/socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

namespace moe::comm {

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.release();
  }
  return *this;
}

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

namespace {

addrinfo* resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string p = std::to_string(port);
  const char* h = host.empty() || host == "0.0.0.0" ? nullptr : host.c_str();
  const int rc = getaddrinfo(h, p.c_str(), &hints, &res);
  MOE_CHECK(rc == 0 && res, "comm.socket", "cannot resolve '", host, "': ", gai_strerror(rc),
            "; check MOE_MASTER_ADDR");
  return res;
}

std::string sockaddr_str(const sockaddr_in& a) {
  char ip[INET_ADDRSTRLEN] = {0};
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

}  // namespace

Fd listen_tcp(const std::string& host, int port, int* bound_port, int backlog) {
  addrinfo* res = resolve(host, port, true);
  Fd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  MOE_CHECK(fd, "comm.socket", "socket(): ", std::strerror(errno));
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const int rc = ::bind(fd.get(), res->ai_addr, res->ai_addrlen);
  const int err = errno;
  freeaddrinfo(res);
  MOE_CHECK(rc == 0, "comm.socket", "cannot listen on ", host.empty() ? "*" : host, ":", port,
            ": ", std::strerror(err),
            err == EADDRINUSE ? " (another job uses this port: pick another MOE_MASTER_PORT)" : "");
  MOE_CHECK(::listen(fd.get(), backlog) == 0, "comm.socket", "listen(): ", std::strerror(errno));
  if (bound_port) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    *bound_port = ntohs(a.sin_port);
  }
  return fd;
}

Fd connect_tcp(const std::string& host, int port, Deadline deadline, const std::string& what) {
  int last_err = 0;
  int backoff_ms = 10;
  while (true) {
    addrinfo* res = resolve(host, port, false);
    Fd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    MOE_CHECK(fd, "comm.socket", "socket(): ", std::strerror(errno));
    const int rc = ::connect(fd.get(), res->ai_addr, res->ai_addrlen);
    last_err = errno;
    freeaddrinfo(res);
    if (rc == 0) return fd;
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = std::min(backoff_ms * 2, 500);
  }
  MOE_FAIL("comm.socket", "cannot connect to ", what, " at ", host, ":", port, ": ",
           std::strerror(last_err), "; check that it is running and the address is reachable");
}

Fd accept_tcp(int listen_fd, Deadline deadline, std::string* peer_addr) {
  while (true) {
    pollfd p{listen_fd, POLLIN, 0};
    const int rc = ::poll(&p, 1, ms_until(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return Fd();
    sockaddr_in a{};
    socklen_t len = sizeof a;
    const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&a), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      MOE_FAIL("comm.socket", "accept(): ", std::strerror(errno));
    }
    if (peer_addr) *peer_addr = sockaddr_str(a);
    return Fd(fd);
  }
}

void write_all(int fd, const void* buf, size_t n, Deadline deadline, const std::string& what) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    MOE_CHECK(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "comm.socket",
              "write to ", what, " failed: ", std::strerror(errno));
    pollfd pf{fd, POLLOUT, 0};
    const int rc = ::poll(&pf, 1, ms_until(deadline));
    MOE_CHECK(rc != 0, "comm.socket", "timed out writing to ", what);
  }
}

void read_all(int fd, void* buf, size_t n, Deadline deadline, const std::string& what) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    MOE_CHECK(r != 0, "comm.socket", what, " closed the connection");
    if (errno == EINTR) continue;
    MOE_CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "comm.socket", "read from ", what,
              " failed: ", std::strerror(errno));
    pollfd pf{fd, POLLIN, 0};
    const int rc = ::poll(&pf, 1, ms_until(deadline));
    MOE_CHECK(rc != 0, "comm.socket", "timed out reading from ", what);
  }
}

void set_nonblocking(int fd, bool on) {
  const int fl = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

void set_nodelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // A host that vanishes (power, cable) closes nothing: keepalive probes and a cap on
  // unacknowledged data turn it into a socket error within about a minute.
  const int idle = 20, intvl = 5, cnt = 4;
  const unsigned user_timeout_ms = 60000;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

void set_buffer_sizes(int fd, int bytes) {
  if (bytes <= 0) return;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

std::string set_congestion_control(int fd, const std::string& name) {
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(), socklen_t(name.size())) == 0)
    return "";
  return std::strerror(errno);
}

std::string congestion_control(int fd) {
  char name[64] = {};
  socklen_t len = sizeof name - 1;
  if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0) return "";
  return std::string(name, strnlen(name, len));
}

std::string allowed_congestion_controls() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_allowed_congestion_control");
  std::string line;
  if (!std::getline(f, line)) return "(unknown: /proc/sys/net/ipv4 is not readable)";
  return line;
}

void require_congestion_control(const std::string& name, const char* setting) {
  Fd probe(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const std::string why =
      probe ? set_congestion_control(probe.get(), name) : std::string(std::strerror(errno));
  MOE_CHECK(why.empty(), "comm.tcp", setting, "=", name, ": the kernel refused it (", why,
            "); this host allows: ", allowed_congestion_controls(),
            ". Use one of those, or 'system' for the host's default");
}

std::string local_ip(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  MOE_CHECK(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0, "comm.socket",
            "getsockname(): ", std::strerror(errno));
  char ip[INET_ADDRSTRLEN] = {0};
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
  return ip;
}

std::string peer_name(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  return sockaddr_str(a);
}

}  // namespace moe::comm
