// The TCP transport's socket engine: the progress loop, the waiter that drives the sockets
// itself, one polling round, and reading and writing frames. Setup, the API and wait() are in
// tcp.cpp.
#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "comm/transport/tcp.h"

namespace moe::comm {

void TcpTransport::epoll_mod(int ep, int fd, void* ptr, uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = ptr;
  MOE_CHECK(epoll_ctl(ep, op, fd, &ev) == 0 || op == EPOLL_CTL_DEL, "comm.tcp",
            "epoll_ctl: ", std::strerror(errno));
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
    if (poll_once(500000000) < 0) return;
  }
}

void TcpTransport::drive(Request& r, Deadline deadline) {
  // Poll (yielding the core) for spin_us, then sleep in epoll: waking from a sleep costs tens
  // of microseconds in this VM, more than a small message takes.
  const auto spin = std::chrono::nanoseconds(int64_t(std::max(0.0, opt_.spin_us) * 1e3));
  auto idle_since = Clock::now();
  std::lock_guard<std::mutex> poll(poll_mu_);
  while (!r.done.load(std::memory_order_acquire) && !failed_.load() &&
         (r.is_send || !peer_said_bye(r.peer))) {
    const auto now = Clock::now();
    const int64_t left =
        std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
    if (left <= 0) return;
    const bool spinning = now - idle_since < spin;
    const int n = poll_once(spinning ? 0 : std::min<int64_t>(left, 100000000));
    if (n < 0) return;
    if (n > 0)
      idle_since = Clock::now();
    else if (spinning)
      sched_yield();
  }
}

int TcpTransport::poll_once(int64_t timeout_ns) {
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
      timeout_ns = std::min<int64_t>(
          timeout_ns,
          std::chrono::duration_cast<std::chrono::nanoseconds>(s.out.front().ready - now).count());
      ++i;
    }
  }
  const timespec timeout{static_cast<time_t>(timeout_ns / 1000000000),
                         static_cast<long>(timeout_ns % 1000000000)};
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
  static const char kZeros[kSinkBytes] = {};  // pads a started chunk after abandon()
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
