#include "comm/transport/tcp.h"

#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "comm/auth.h"

namespace moe::comm {

namespace {

constexpr size_t kSinkBytes = 64 << 10;
const char kZeros[kSinkBytes] = {};

constexpr uint32_t kHelloMagic = 0x4c454d4d;  // "MMEL"
// How long the progress thread stays asleep after a waiter drove the sockets (see wait()).
constexpr auto kDriveLinger = std::chrono::milliseconds(1);
struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t index;
  int32_t size;
};

void epoll_mod(int ep, int fd, void* ptr, uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = ptr;
  MOE_CHECK(epoll_ctl(ep, op, fd, &ev) == 0 || op == EPOLL_CTL_DEL, "comm.tcp",
            "epoll_ctl: ", std::strerror(errno));
}

}  // namespace

TcpOptions TcpOptions::from_env() {
  TcpOptions o;
  o.sockets_per_peer = static_cast<int>(env_int("MOE_COMM_SOCKETS", o.sockets_per_peer));
  MOE_CHECK(o.sockets_per_peer >= 1 && o.sockets_per_peer <= 64, "comm.tcp",
            "MOE_COMM_SOCKETS=", o.sockets_per_peer, " must be in 1..64");
  o.socket_buffer = static_cast<int>(env_int("MOE_COMM_SOCKET_BUFFER", o.socket_buffer));
  o.chunk_bytes = static_cast<uint64_t>(env_int("MOE_COMM_CHUNK", int64_t(o.chunk_bytes)));
  MOE_CHECK(o.chunk_bytes >= 4096, "comm.tcp", "MOE_COMM_CHUNK must be at least 4096 bytes");
  o.connect_timeout_s = env_double("MOE_COMM_CONNECT_TIMEOUT", o.connect_timeout_s);
  o.bind_addr = env_str("MOE_COMM_IFADDR", "");
  o.congestion = env_str("MOE_COMM_TCP_CONGESTION", "");
  o.drive_max_bytes =
      static_cast<uint64_t>(env_int("MOE_COMM_TCP_DRIVE_MAX", int64_t(o.drive_max_bytes)));
  o.spin_us = env_double("MOE_COMM_TCP_SPIN_US", o.spin_us);
  o.emu_latency_us = env_double("MOE_COMM_EMU_LATENCY_US", 0);
  o.emu_gbps = env_double("MOE_COMM_EMU_GBPS", 0);
  // The same cap in MB/s (10^6 bytes), handier for slow links: 100 is about 1 Gbit/s.
  const double mbps = env_double("MOE_COMM_EMU_BW_MBPS", 0);
  MOE_CHECK(mbps >= 0 && o.emu_gbps >= 0, "comm.tcp", "emulated bandwidth must be positive");
  if (mbps > 0) o.emu_gbps = mbps / 1000;
  o.emu_scope = env_str("MOE_COMM_EMU_SCOPE", "remote");
  MOE_CHECK(o.emu_scope == "remote" || o.emu_scope == "all", "comm.tcp", "MOE_COMM_EMU_SCOPE='",
            o.emu_scope, "': use remote or all");
  return o;
}

TcpTransport::TcpTransport(StoreClient& store, const std::string& prefix, const std::string& token,
                           int rank, int size, const TcpOptions& opt)
    : rank_(rank), size_(size), opt_(opt), peers_(size), sink_(new char[kSinkBytes]) {
  for (auto& p : peers_) p.socks.resize(opt_.sockets_per_peer);
  // A congestion control named in the environment that the host refuses stops every rank
  // here, before any connection is made.
  const bool set_cc = !opt_.congestion.empty() && opt_.congestion != "system";
  if (set_cc) require_congestion_control(opt_.congestion, "MOE_COMM_TCP_CONGESTION");
  connect_mesh(store, prefix, token);
  epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
  wake_ = Fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  MOE_CHECK(epoll_ && wake_, "comm.tcp", "epoll/eventfd: ", std::strerror(errno));
  epoll_mod(epoll_.get(), wake_.get(), nullptr, EPOLLIN, EPOLL_CTL_ADD);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    for (auto& s : peers_[p].socks) {
      set_nonblocking(s->fd, true);
      set_nodelay(s->fd);
      set_buffer_sizes(s->fd, opt_.socket_buffer);
      if (set_cc) set_congestion_control(s->fd, opt_.congestion);
      epoll_mod(epoll_.get(), s->fd, s.get(), EPOLLIN, EPOLL_CTL_ADD);
    }
    peers_[p].open = opt_.sockets_per_peer;
  }
  progress_ = std::thread([this] { progress_loop(); });
}

void TcpTransport::connect_mesh(StoreClient& store, const std::string& prefix,
                                const std::string& token) {
  const int nsock = opt_.sockets_per_peer;
  const Deadline deadline = deadline_after(opt_.connect_timeout_s);
  int port = 0;
  Fd lfd = listen_tcp(opt_.bind_addr, 0, &port);
  const std::string ip = opt_.bind_addr.empty() ? local_ip(store.fd()) : opt_.bind_addr;
  store.set(prefix + "addr/" + std::to_string(rank_), ip + ":" + std::to_string(port));

  // Higher ranks dial us; we dial lower ranks. Accepting runs beside dialing so no rank waits
  // on one that is itself still dialing.
  std::atomic<bool> abort{false};
  std::exception_ptr accept_error;
  std::thread acceptor([&] {
    try {
      int expected = (size_ - 1 - rank_) * nsock;
      while (expected > 0) {
        MOE_CHECK(!abort.load(), "comm.tcp", "aborted");
        std::string from;
        Fd fd = accept_tcp(lfd.get(), std::min(deadline, deadline_after(0.2)), &from);
        if (!fd) {
          MOE_CHECK(Clock::now() < deadline, "comm.tcp", "rank ", rank_, ": ", expected,
                    " connections from higher ranks did not arrive within ", opt_.connect_timeout_s,
                    " s; a rank did not start or cannot reach ", ip,
                    " (set MOE_COMM_IFADDR to an address the others can reach)");
          continue;
        }
        std::string why;
        if (!auth_accept(fd.get(), token, deadline_after(10), &why)) {
          MOE_COMM_WARN("rank ", rank_, ": refused a connection from ", from, ": ", why);
          continue;
        }
        Hello h{};
        try {
          read_all(fd.get(), &h, sizeof h, deadline_after(10), "connecting rank");
        } catch (const Error& e) {
          MOE_COMM_WARN("rank ", rank_, ": dropped a connection from ", from, ": ", e.what());
          continue;
        }
        if (h.magic != kHelloMagic || h.size != size_ || h.rank <= rank_ || h.rank >= size_ ||
            h.index < 0 || h.index >= nsock || peers_[h.rank].socks[h.index]) {
          MOE_COMM_WARN("rank ", rank_, ": refused a connection from ", from, ": it claims rank ",
                        h.rank, " socket ", h.index, " of world ", h.size);
          continue;
        }
        auto s = std::make_unique<Sock>();
        s->fd = fd.release();
        s->peer = h.rank;
        peers_[h.rank].socks[h.index] = std::move(s);
        --expected;
      }
    } catch (...) {
      accept_error = std::current_exception();
    }
  });
  try {
    for (int p = 0; p < rank_; ++p) {
      const std::string addr = store.get(prefix + "addr/" + std::to_string(p));
      const size_t colon = addr.rfind(':');
      const std::string host = addr.substr(0, colon);
      const int pport = std::atoi(addr.c_str() + colon + 1);
      const std::string what = "rank " + std::to_string(p) + " (" + addr + ")";
      for (int i = 0; i < nsock; ++i) {
        Fd fd = connect_tcp(host, pport, deadline, what);
        auth_connect(fd.get(), token, deadline_after(30), what);
        const Hello h{kHelloMagic, rank_, i, size_};
        write_all(fd.get(), &h, sizeof h, deadline, what);
        auto s = std::make_unique<Sock>();
        s->fd = fd.release();
        s->peer = p;
        peers_[p].socks[i] = std::move(s);
      }
    }
  } catch (...) {
    abort = true;
    acceptor.join();
    throw;
  }
  acceptor.join();
  if (accept_error) std::rethrow_exception(accept_error);
}

TcpTransport::~TcpTransport() {
  if (progress_.joinable()) {
    // Say goodbye on every socket and wait (briefly) for everyone's goodbye, so no socket is
    // closed with unread bytes in it (that would send a reset that can eat the peer's data).
    if (!failed_) {
      std::unique_lock<std::mutex> lock(mu_);
      for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        for (auto& s : peers_[p].socks) {
          if (s->closed) continue;
          OutChunk c{};
          c.hdr.magic = kMsgMagic;
          c.hdr.kind = static_cast<uint8_t>(OpKind::kBye);
          c.data = nullptr;
          enqueue_locked(*s, c);
        }
      }
      const Deadline d = deadline_after(env_double("MOE_COMM_SHUTDOWN_WAIT", 5));
      cv_.wait_until(lock, d, [&] {
        if (failed_) return true;
        for (int p = 0; p < size_; ++p) {
          if (p == rank_) continue;
          if (!peers_[p].bye && peers_[p].open > 0) return false;
          for (auto& s : peers_[p].socks)
            if (!s->closed && !s->out.empty()) return false;
        }
        return true;
      });
    }
    if (failed_) {
      // Our abort messages go out, and the peers close first, so no reset eats them.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_until(lock, deadline_after(env_double("MOE_COMM_ABORT_WAIT", 2)), [&] {
        for (int p = 0; p < size_; ++p) {
          if (p == rank_ || peers_[p].open == 0) continue;
          if (!peers_[p].aborted) return false;
          for (auto& s : peers_[p].socks)
            if (!s->closed && !s->out.empty()) return false;
        }
        return true;
      });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    drive_cv_.notify_all();
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(wake_.get(), &one, sizeof one);
    progress_.join();
  }
  for (auto& p : peers_)
    for (auto& s : p.socks)
      if (s && s->fd >= 0) ::close(s->fd);
}

void TcpTransport::set_emulated_peers(const std::vector<bool>& emulate) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int p = 0; p < size_ && p < int(emulate.size()); ++p)
    peers_[p].emulate = p != rank_ && emulate[p] && opt_.emulating();
}

void TcpTransport::set_local_peers(const std::vector<bool>& local) {
  if (opt_.spin_us < 0) {
    int here = 1;
    for (int p = 0; p < size_ && p < int(local.size()); ++p) here += p != rank_ && local[p];
    opt_.spin_us = here <= usable_cpus() ? 1000 : 50;
  }
  if (!opt_.congestion.empty()) return;  // named (or "system"): already as asked
  std::lock_guard<std::mutex> lock(mu_);
  for (int p = 0; p < size_ && p < int(local.size()); ++p) {
    if (p == rank_ || !local[p]) continue;
    // reno is built into every kernel; were it refused, the host's default simply stays.
    for (auto& s : peers_[p].socks)
      if (!s->closed) set_congestion_control(s->fd, "reno");
    peers_[p].local = true;
  }
}

std::string TcpTransport::congestion() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string here, there;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_ || peers_[p].socks.empty() || peers_[p].socks[0]->closed) continue;
    std::string& name = peers_[p].local ? here : there;
    if (name.empty()) name = congestion_control(peers_[p].socks[0]->fd);
  }
  if (here.empty() || there.empty() || here == there) return here.empty() ? there : here;
  return here + " on this host, " + there + " to other hosts";
}

std::string TcpTransport::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void TcpTransport::fail(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_locked(why);
}

void TcpTransport::abandon(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    fail_locked(why);  // keeps the first failure if there was one
  }
  std::lock_guard<std::mutex> user(user_mu_);
  detached_ = true;
}

bool TcpTransport::peer_said_bye(int peer) const {
  std::lock_guard<std::mutex> lock(mu_);
  return peers_[peer].bye;
}

void TcpTransport::set_wake_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  wake_hook_ = std::move(hook);
}

void TcpTransport::fail_locked(const std::string& why) {
  if (!failed_) {
    error_ = why;
    failed_ = true;
    // Tell every peer the root cause before we go: a peer that sees our exit before the
    // original failure then still names the rank that failed first.
    abort_payload_ = "rank " + std::to_string(rank_) + " stopped after: " + why;
    if (abort_payload_.size() > 4000) abort_payload_.resize(4000);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_ || peers_[p].socks.empty()) continue;
      for (auto& s : peers_[p].socks) {
        if (!s || s->closed || s->fd < 0 || !epoll_) continue;
        OutChunk c{};
        c.hdr.magic = kMsgMagic;
        c.hdr.kind = static_cast<uint8_t>(OpKind::kAbort);
        c.hdr.total = c.hdr.chunk_len = static_cast<uint32_t>(abort_payload_.size());
        c.data = abort_payload_.data();
        enqueue_locked(*s, c);
        break;
      }
    }
  }
  cv_.notify_all();
  if (wake_hook_) wake_hook_();
}

void TcpTransport::complete(Request& r) {
  r.done.store(true, std::memory_order_release);
  cv_.notify_all();
  if (wake_hook_) wake_hook_();
}

void TcpTransport::enqueue_locked(Sock& s, OutChunk c) {
  s.out.push_back(std::move(c));
  if (!s.want_out && !s.timed && !s.closed) {
    s.want_out = true;
    epoll_mod(epoll_.get(), s.fd, &s, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
  }
}

RequestPtr TcpTransport::isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf,
                               uint64_t n) {
  MOE_CHECK(peer >= 0 && peer < size_ && peer != rank_, "comm.tcp", "send to rank ", peer,
            " from rank ", rank_, " of ", size_);
  auto req = std::make_shared<Request>();
  req->is_send = true;
  req->peer = peer;
  req->size = n;
  MsgHeader h = make_header(key, sig, n);
  Peer& P = peers_[peer];
  const uint64_t nsock = P.socks.size();
  // Big messages are cut into chunks dealt round-robin over the peer's sockets.
  const uint64_t chunk =
      std::min<uint64_t>(opt_.chunk_bytes, std::max<uint64_t>(64 << 10, (n + nsock - 1) / nsock));
  const uint64_t nchunks = n == 0 ? 1 : (n + chunk - 1) / chunk;
  std::unique_lock<std::mutex> lock(mu_);
  req->chunks_left = static_cast<int>(nchunks);
  for (uint64_t i = 0; i < nchunks; ++i) {
    h.offset = i * chunk;
    h.chunk_len = static_cast<uint32_t>(std::min(chunk, n - h.offset));
    Sock& s = *P.socks[P.next_sock++ % nsock];
    if (s.closed) continue;  // the wait reports the dead peer
    OutChunk c{h, static_cast<const char*>(buf) + h.offset, 0, req, {}};
    if (P.emulate) {
      // Token bucket per link, then the latency; FIFO per socket keeps the order.
      const auto now = Clock::now();
      if (P.link_free < now) P.link_free = now;
      if (opt_.emu_gbps > 0)
        P.link_free += std::chrono::nanoseconds(
            static_cast<int64_t>(double(sizeof(MsgHeader) + h.chunk_len) / opt_.emu_gbps));
      c.ready =
          P.link_free + std::chrono::nanoseconds(static_cast<int64_t>(opt_.emu_latency_us * 1e3));
      enqueue_locked(s, std::move(c));
      continue;
    }
    // Fast path: with nothing queued on the socket the progress thread is not writing to it,
    // so the caller writes itself and saves a thread hand-off per message. The write happens
    // outside the lock (`writing` keeps the socket ours), so the progress thread goes on
    // receiving meanwhile: holding the lock through a 1 MiB write stalled the receive side.
    if (s.out.empty() && !s.writing) {
      s.writing = true;
      lock.unlock();
      const bool all = try_write(s, c);
      lock.lock();
      s.writing = false;
      if (all) {
        if (--req->chunks_left == 0) req->done.store(true, std::memory_order_release);
      } else if (!s.closed) {
        s.out.push_front(std::move(c));  // started on the wire: before anything queued since
      }
      // The peer may have gone while we wrote (the socket is out of epoll then), and a chunk
      // queued meanwhile (a failure's abort message) left for the progress thread to write.
      if (!s.closed && !s.out.empty() && !s.want_out && !s.timed) {
        s.want_out = true;
        epoll_mod(epoll_.get(), s.fd, &s, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
      }
      continue;
    }
    enqueue_locked(s, std::move(c));
  }
  return req;
}

RequestPtr TcpTransport::irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf,
                               uint64_t n) {
  MOE_CHECK(peer >= 0 && peer < size_ && peer != rank_, "comm.tcp", "receive from rank ", peer,
            " on rank ", rank_, " of ", size_);
  RequestPtr req = make_receive(peer, key, sig, buf, n, /*shm=*/false);
  std::lock_guard<std::mutex> lock(mu_);
  // A failed transport completes no receive (a message already here may be another
  // collective's, found out by begin_op); the wait reports the failure.
  if (failed_) return req;
  Peer& P = peers_[peer];
  std::string error;
  const auto it = post_receive(P.inbox, rank_, req, &error);
  if (it == P.inbox.end()) return req;  // waits for the message
  if (!error.empty()) {
    fail_locked(error);
    return req;
  }
  InMsg& m = it->second;
  for (const auto& [off, len] : m.stashed)
    std::memcpy(static_cast<char*>(buf) + off, m.stash.get() + off, len);
  m.stashed.clear();
  if (m.got == m.total) {
    erase_msg(P, it);
    complete(*req);
  } else {
    m.req = req;  // chunks still on their way go to `buf` (those begun go to the stash first)
  }
  return req;
}

void TcpTransport::wait(Request& r, Deadline deadline, const OpLabel& what) {
  for (int i = 0; i < 200; ++i) {
    if (r.done.load(std::memory_order_acquire)) return;
    if (failed_.load(std::memory_order_relaxed)) break;
  }
  bool drive = false, kick = false;
  if (r.size <= opt_.drive_max_bytes && opt_.drive_max_bytes > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    drive = !driving_ && !failed_ && !r.done.load(std::memory_order_acquire);
    if (drive) driving_ = true, kick = polling_;
  }
  if (drive) {
    if (kick) {  // the progress thread leaves epoll and sleeps until we are done
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t w = ::write(wake_.get(), &one, sizeof one);
    }
    {
      // Poll (yielding the core) for spin_us, then sleep in epoll: waking from a sleep costs
      // tens of microseconds in this VM, more than a small message takes.
      const auto spin = std::chrono::nanoseconds(int64_t(std::max(0.0, opt_.spin_us) * 1e3));
      auto idle_since = Clock::now();
      std::lock_guard<std::mutex> poll(poll_mu_);
      while (!r.done.load(std::memory_order_acquire) && !failed_.load() &&
             (r.is_send || !peer_said_bye(r.peer))) {
        const auto now = Clock::now();
        const int64_t left =
            std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
        if (left <= 0) break;
        const bool spinning = now - idle_since < spin;
        const int64_t ns = spinning ? 0 : std::min<int64_t>(left, 100000000);
        const int n =
            poll_once({static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)});
        if (n < 0) break;
        if (n > 0) idle_since = Clock::now();
        else if (spinning) sched_yield();
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    driving_ = false;
    last_drive_ = Clock::now();  // the progress thread comes back by itself after kDriveLinger
  }
  std::string err;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!r.done.load(std::memory_order_acquire) && !driving_ && !polling_) {
      // About to sleep on a message the progress thread must read, while it lingers after a
      // driven wait: call it back now rather than up to kDriveLinger later.
      last_drive_ = Clock::time_point{};
      drive_cv_.notify_all();
    }
    while (!r.done.load(std::memory_order_acquire)) {
      if (failed_) {
        err = what.str() + ": " + error_;
      } else if (!r.is_send && peers_[r.peer].bye) {
        err = peer_gone_message(what, r.peer);
      } else if (cv_.wait_until(lock, deadline) == std::cv_status::timeout &&
                 !r.done.load(std::memory_order_acquire)) {
        err = timeout_message(what, r);
      }
      if (!err.empty()) break;
    }
  }
  if (err.empty()) return;
  abandon(err);
  MOE_FAIL("comm", err);
}

void TcpTransport::begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig) {
  std::lock_guard<std::mutex> lock(mu_);
  current_[comm_id] = CurrentOp{seq, sig};
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    auto& inbox = peers_[p].inbox;
    for (auto it = inbox.lower_bound(MsgKey{comm_id, seq, 0});
         it != inbox.end() && it->first.comm_id == comm_id && it->first.seq == seq; ++it) {
      if (it->second.first.magic == kMsgMagic) check_sig_locked(p, it->second.first);
    }
  }
}

void TcpTransport::end_op(uint64_t comm_id) {
  std::lock_guard<std::mutex> lock(mu_);
  // Kept with no operation (sequence numbers start at 1) rather than erased: one entry per
  // communicator, and no map node allocated and freed per call.
  const auto it = current_.find(comm_id);
  if (it != current_.end()) it->second.seq = 0;
}

void TcpTransport::check_sig_locked(int peer, const MsgHeader& h) {
  if (h.seq & kP2pSeqBit) return;
  auto it = current_.find(h.comm_id);
  if (it == current_.end() || it->second.seq != h.seq) return;
  const OpSig theirs = sig_of(h);
  if (theirs == it->second.sig) return;
  fail_locked(mismatch_message(rank_, it->second.sig, peer, theirs, h.seq));
}

void TcpTransport::progress_loop() {
  while (!stop_.load()) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      polling_ = false;
      while (!stop_.load() && (driving_ || Clock::now() - last_drive_ < kDriveLinger))
        drive_cv_.wait_until(lock, std::max(Clock::now(), last_drive_) + kDriveLinger);
      polling_ = true;
    }
    std::lock_guard<std::mutex> poll(poll_mu_);
    if (poll_once({0, 500000000}) < 0) return;
  }
}

int TcpTransport::poll_once(timespec timeout) {
  epoll_event evs[64];
  {
    // Parked sockets (emulated links) wake the loop at their release time.
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    for (size_t i = 0; i < timed_.size();) {
      Sock& s = *timed_[i];
      if (s.closed || s.out.empty() || s.out.front().ready <= now) {
        s.timed = false;
        if (!s.closed && !s.out.empty() && !s.want_out) {
          s.want_out = true;
          epoll_mod(epoll_.get(), s.fd, &s, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
        }
        timed_[i] = timed_.back();
        timed_.pop_back();
        continue;
      }
      const auto wait =
          std::chrono::duration_cast<std::chrono::nanoseconds>(s.out.front().ready - now).count();
      if (wait < timeout.tv_sec * 1000000000ll + timeout.tv_nsec)
        timeout = {static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
      ++i;
    }
  }
  const int n = epoll_pwait2(epoll_.get(), evs, 64, &timeout, nullptr);
  if (n < 0) {
    if (errno == EINTR) return 0;
    std::lock_guard<std::mutex> lock(mu_);
    fail_locked(std::string("epoll_wait: ") + std::strerror(errno));
    return -1;
  }
  for (int i = 0; i < n; ++i) {
    if (!evs[i].data.ptr) {
      uint64_t v;
      [[maybe_unused]] ssize_t r = ::read(wake_.get(), &v, sizeof v);
      continue;
    }
    Sock& s = *static_cast<Sock*>(evs[i].data.ptr);
    if (!s.closed && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(s);
    if (!s.closed && (evs[i].events & EPOLLOUT)) on_writable(s);
  }
  return n;
}

void TcpTransport::peer_closed(Sock& s, const std::string& how) {
  std::lock_guard<std::mutex> lock(mu_);
  if (s.closed) return;
  s.closed = true;
  epoll_mod(epoll_.get(), s.fd, nullptr, 0, EPOLL_CTL_DEL);
  Peer& P = peers_[s.peer];
  --P.open;
  if (!s.got_bye)
    fail_locked("rank " + std::to_string(s.peer) + " closed its connection (" + how +
                "): that process exited or was killed; its own output says why");
  cv_.notify_all();
}

void TcpTransport::on_readable(Sock& s) {
  while (!s.closed) {
    const bool in_header = s.msg == nullptr;
    char* dst = in_header ? reinterpret_cast<char*>(&s.hdr) + s.hdr_got : s.dst;
    size_t want = in_header ? sizeof(MsgHeader) - s.hdr_got : s.left;
    // A caller's buffer is written only while it is not abandoned (see abandon()).
    std::unique_lock<std::mutex> user(user_mu_, std::defer_lock);
    if (!in_header && s.to_user) {
      user.lock();
      if (detached_) s.to_user = false, s.discard = true;
    }
    if (!in_header && s.discard) {
      dst = sink_.get();
      want = std::min(want, kSinkBytes);
    }
    ssize_t r = want ? ::recv(s.fd, dst, want, 0) : 0;
    if (user.owns_lock()) user.unlock();
    if (want && r == 0) return peer_closed(s, "end of stream");
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      return peer_closed(s, std::strerror(errno));
    }
    if (in_header) {
      s.hdr_got += static_cast<size_t>(r);
      if (s.hdr_got < sizeof(MsgHeader)) continue;
      s.hdr_got = 0;
      std::lock_guard<std::mutex> lock(mu_);
      header_arrived(s);
      if (s.msg && s.left == 0) chunk_done(s);
    } else {
      if (!s.discard) s.dst += r;
      s.left -= static_cast<size_t>(r);
      if (s.left == 0) {
        std::lock_guard<std::mutex> lock(mu_);
        chunk_done(s);
      }
    }
  }
}

void TcpTransport::header_arrived(Sock& s) {
  const MsgHeader& h = s.hdr;
  Peer& P = peers_[s.peer];
  s.to_user = s.to_stash = s.discard = false;
  const std::string bad = check_header(h);
  if (!bad.empty()) {
    // The peer proved the token, so this is a bug or corruption: stop reading the stream.
    fail_locked("rank " + std::to_string(s.peer) + " sent a malformed message header (" + bad +
                ")");
    s.closed = true;
    epoll_mod(epoll_.get(), s.fd, nullptr, 0, EPOLL_CTL_DEL);
    --P.open;
    return;
  }
  if (h.kind == static_cast<uint8_t>(OpKind::kBye)) {
    // Each socket is its own ordered stream: data sent before the goodbye on another socket
    // may still be on its way, so the peer is gone only once every socket has said goodbye.
    s.got_bye = true;
    P.bye = std::all_of(P.socks.begin(), P.socks.end(),
                        [](const std::unique_ptr<Sock>& o) { return o->got_bye || o->closed; });
    cv_.notify_all();
    if (wake_hook_) wake_hook_();
    return;
  }
  if (h.kind == static_cast<uint8_t>(OpKind::kAbort)) {
    s.reading_abort = true;
    s.abort_text.assign(std::min<uint32_t>(h.chunk_len, 4096), '\0');
    if (h.chunk_len > 4096) {  // not ours: stop reading this stream
      fail_locked("rank " + std::to_string(s.peer) + " sent a malformed abort message");
      s.closed = true;
      epoll_mod(epoll_.get(), s.fd, nullptr, 0, EPOLL_CTL_DEL);
      --P.open;
      return;
    }
    s.dst = s.abort_text.data();
    s.left = h.chunk_len;
    s.msg = &s.abort_msg;
    return;
  }
  check_sig_locked(s.peer, h);
  const MsgKey key{h.comm_id, h.seq, h.tag};
  auto [it, inserted] = P.inbox.try_emplace(key);
  InMsg& m = it->second;
  if (inserted) m.total = h.total;
  if (m.first.magic != kMsgMagic) m.first = h;
  if (m.total != h.total) {
    const Request* q = m.req.get();
    fail_locked(size_mismatch_message(rank_, m.total, q ? &q->sig : nullptr, q ? q->seq : 0, s.peer,
                                      h.total, h));
    // Keep the stream in sync: read this chunk into a stash of the sender's size.
    if (m.stash) give_stash(std::move(m.stash));
    m.stash = take_stash(h.total);
    m.total = h.total;
    m.req.reset();
    m.stashed.clear();
  }
  // Once failed (this header may be another collective's), nothing more completes a receive:
  // its bytes could be the wrong collective's with the right size.
  if (failed_ && m.req) m.req.reset();
  if (m.req) {
    s.dst = static_cast<char*>(m.req->buf) + h.offset;
    s.to_user = true;
  } else {
    if (!m.stash) m.stash = take_stash(m.total);
    s.dst = m.stash.get() + h.offset;
    s.to_stash = true;
  }
  s.left = h.chunk_len;
  s.msg = &m;
  s.key = key;
}

void TcpTransport::chunk_done(Sock& s) {
  InMsg& m = *s.msg;
  s.msg = nullptr;
  if (s.reading_abort) {
    s.reading_abort = false;
    peers_[s.peer].aborted = true;
    fail_locked(s.abort_text);
    return;
  }
  m.got += s.hdr.chunk_len;
  if (s.to_stash && s.hdr.chunk_len) {
    const uint64_t off = s.hdr.offset, len = s.hdr.chunk_len;
    if (!m.req) {
      m.stashed.emplace_back(off, len);
    } else {  // the receive was posted while this chunk was on its way
      std::lock_guard<std::mutex> user(user_mu_);
      if (!detached_) std::memcpy(static_cast<char*>(m.req->buf) + off, m.stash.get() + off, len);
    }
  }
  if (m.got < m.total || !m.req) return;
  RequestPtr r = std::move(m.req);
  Peer& P = peers_[s.peer];
  erase_msg(P, P.inbox.find(s.key));
  complete(*r);
}

TcpTransport::Stash TcpTransport::take_stash(uint64_t bytes) {
  // Smallest pooled buffer that fits, else a new one.
  size_t best = stash_pool_.size();
  for (size_t i = 0; i < stash_pool_.size(); ++i)
    if (stash_pool_[i].cap >= bytes &&
        (best == stash_pool_.size() || stash_pool_[i].cap < stash_pool_[best].cap))
      best = i;
  if (best < stash_pool_.size()) {
    Stash s = std::move(stash_pool_[best]);
    stash_pool_.erase(stash_pool_.begin() + long(best));
    return s;
  }
  Stash s;
  s.cap = std::max<uint64_t>(bytes, 4096);
  s.data.reset(new char[s.cap]);
  return s;
}

void TcpTransport::give_stash(Stash s) {
  if (!s) return;
  // Keep up to MOE_COMM_STASH_POOL bytes (default 256 MiB); past that drop the smallest
  // buffers (the big ones are the costly ones to fault in again).
  static const uint64_t limit = uint64_t(env_int("MOE_COMM_STASH_POOL", 256 << 20));
  stash_pool_.push_back(std::move(s));
  uint64_t total = 0;
  for (auto& b : stash_pool_) total += b.cap;
  while (total > limit && !stash_pool_.empty()) {
    auto it = std::min_element(stash_pool_.begin(), stash_pool_.end(),
                               [](const Stash& a, const Stash& b) { return a.cap < b.cap; });
    total -= it->cap;
    stash_pool_.erase(it);
  }
}

void TcpTransport::erase_msg(Peer& p, std::map<MsgKey, InMsg>::iterator it) {
  give_stash(std::move(it->second.stash));
  p.inbox.erase(it);
}

bool TcpTransport::try_write(Sock& s, OutChunk& c) {
  const size_t hsz = sizeof(MsgHeader);
  const size_t len = hsz + c.hdr.chunk_len;
  while (c.sent < len) {
    iovec iov[2];
    int cnt = 0;
    if (c.sent < hsz) {
      iov[cnt++] = {reinterpret_cast<char*>(&c.hdr) + c.sent, hsz - c.sent};
      if (c.hdr.chunk_len) iov[cnt++] = {const_cast<char*>(c.data), c.hdr.chunk_len};
    } else {
      iov[cnt++] = {const_cast<char*>(c.data) + (c.sent - hsz), len - c.sent};
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = cnt;
    const ssize_t w = ::sendmsg(s.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;  // full or broken: the progress thread carries on and reports errors
    }
    c.sent += static_cast<size_t>(w);
  }
  return true;
}

void TcpTransport::on_writable(Sock& s) {
  while (true) {
    OutChunk* c = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (s.closed) return;
      if (s.out.empty() || s.writing) {  // nothing to do, or a caller writes (and re-arms)
        if (s.want_out) {
          s.want_out = false;
          epoll_mod(epoll_.get(), s.fd, &s, EPOLLIN, EPOLL_CTL_MOD);
        }
        return;
      }
      c = &s.out.front();
      if (c->sent == 0 && c->ready != Clock::time_point{} && c->ready > Clock::now()) {
        // Emulated link: park the socket until the chunk's release time.
        s.want_out = false;
        s.timed = true;
        timed_.push_back(&s);
        epoll_mod(epoll_.get(), s.fd, &s, EPOLLIN, EPOLL_CTL_MOD);
        return;
      }
    }
    const size_t hsz = sizeof(MsgHeader);
    const size_t len = hsz + c->hdr.chunk_len;
    // Caller data (chunks with a request; goodbyes and aborts have none) is read only while
    // not abandoned. Afterwards an unstarted chunk is dropped and a started one is finished
    // with zeros, so the peer can still parse the stream up to our abort message.
    std::unique_lock<std::mutex> user(user_mu_, std::defer_lock);
    const char* data = c->data;
    if (c->req) {
      user.lock();
      if (detached_ && c->sent == 0) {
        user.unlock();
        std::lock_guard<std::mutex> lock(mu_);
        s.out.pop_front();
        continue;
      }
      if (detached_) data = nullptr;
    }
    iovec iov[2];
    int cnt = 0;
    if (c->sent < hsz) {
      iov[cnt++] = {reinterpret_cast<char*>(&c->hdr) + c->sent, hsz - c->sent};
      if (c->hdr.chunk_len && data) iov[cnt++] = {const_cast<char*>(data), c->hdr.chunk_len};
    } else if (data) {
      iov[cnt++] = {const_cast<char*>(data) + (c->sent - hsz), len - c->sent};
    } else {
      iov[cnt++] = {const_cast<char*>(kZeros), std::min(len - c->sent, kSinkBytes)};
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = cnt;
    const ssize_t w = ::sendmsg(s.fd, &mh, MSG_NOSIGNAL);
    if (user.owns_lock()) user.unlock();
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      return peer_closed(s, std::strerror(errno));
    }
    c->sent += static_cast<size_t>(w);
    if (c->sent == len) {
      std::lock_guard<std::mutex> lock(mu_);
      RequestPtr r = std::move(c->req);
      s.out.pop_front();
      if (r && --r->chunks_left == 0) complete(*r);
    }
  }
}

}  // namespace moe::comm
