#include "comm/transport/tcp.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "comm/auth.h"

namespace moe::comm {

namespace {

constexpr uint32_t kHelloMagic = 0x4c454d4d;  // "MMEL"
struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t index;
  int32_t size;
};

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
    opt_.spin_us = default_spin_us(here);
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
  bool mine = false, kick = false;  // we drive the sockets; the progress thread is polling
  if (r.size <= opt_.drive_max_bytes && opt_.drive_max_bytes > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    mine = !driving_ && !failed_ && !r.done.load(std::memory_order_acquire);
    if (mine) driving_ = true, kick = polling_;
  }
  if (mine) {
    if (kick) {  // the progress thread leaves epoll and sleeps until we are done
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t w = ::write(wake_.get(), &one, sizeof one);
    }
    drive(r, deadline);
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

}  // namespace moe::comm
