#include "comm/transport/transport.h"

#include <sched.h>

#include <algorithm>

namespace moe::comm {

Transport::Transport(StoreClient& store, const std::string& prefix, const std::string& token,
                     int rank, int size, const TcpOptions& tcp, const ShmOptions& shm,
                     const std::vector<int>& shm_group)
    : rank_(rank), size_(size) {
  // Shared memory first: it needs the store, which rank 0 may take down soon after the TCP
  // mesh is up.
  if (shm_group.size() > 1)
    shm_ = std::make_unique<ShmTransport>(store, prefix, rank, shm_group, shm);
  tcp_ = std::make_unique<TcpTransport>(store, prefix, token, rank, size, tcp);
  if (shm_) {
    shm_->attach(tcp_.get());
    shm_->attach_buffers(buffers_);
    buffers_->set_release_hook([s = shm_.get()] { s->note_release(); });
    // A TCP request that completes, or a failure, wakes a rank asleep on its doorbell.
    tcp_->set_wake_hook([s = shm_.get()] { s->ring_self(); });
  }
}

Transport::~Transport() {
  // TCP first: its goodbye waits for the peers, who may still read our rings until then.
  if (tcp_) tcp_->set_wake_hook(nullptr);
  buffers_->set_release_hook(nullptr);  // buffers may outlive us
  tcp_.reset();
  shm_.reset();
}

std::string Transport::describe() const {
  int shm = 0;
  for (int p = 0; p < size_; ++p) shm += via_shm(p);
  std::string out = "shm to " + std::to_string(shm) + " ranks, tcp to " +
                    std::to_string(size_ - 1 - shm) + " ranks";
  const std::string cc = size_ - 1 - shm > 0 ? tcp_->congestion() : "";
  if (!cc.empty()) out += " (tcp: " + cc + ")";
  if (shm && shm_->single_copy())
    out +=
        " (shm: single copy from " + std::to_string(shm_->options().cma_min_bytes >> 10) + " KiB)";
  return out;
}

RequestPtr Transport::isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf,
                            uint64_t n) {
  return via_shm(peer) ? shm_->isend(peer, key, sig, buf, n) : tcp_->isend(peer, key, sig, buf, n);
}

RequestPtr Transport::irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf, uint64_t n,
                            void* into_dst, const void* into_a) {
  if (via_shm(peer)) return shm_->irecv(peer, key, sig, buf, n, into_dst, into_a);
  // TCP always delivers into `buf`, and never reads these: the caller reduces after the wait.
  RequestPtr r = tcp_->irecv(peer, key, sig, buf, n);
  r->into_dst = into_dst;
  r->into_a = into_a;
  return r;
}

void Transport::begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig) {
  tcp_->begin_op(comm_id, seq, sig);
  if (shm_) shm_->begin_op(comm_id, seq, sig);
}

void Transport::end_op(uint64_t comm_id) {
  tcp_->end_op(comm_id);
  if (shm_) shm_->end_op(comm_id);
}

void Transport::wait(Request& r, Deadline deadline, const OpLabel& what) {
  if (!shm_) return tcp_->wait(r, deadline, what);
  // Spin (yielding the core: there are usually more ranks than cores) for a few microseconds,
  // then sleep on the doorbell. The sleep is capped so the deadline is checked on time.
  const auto spin = std::chrono::nanoseconds(int64_t(shm_->options().spin_us * 1e3));
  auto idle_since = Clock::now();
  std::string err;
  while (err.empty()) {
    if (r.done.load(std::memory_order_acquire)) return;
    if (tcp_->failed()) {
      err = what.str() + ": " + tcp_->failure();
      break;
    }
    const uint32_t bell = shm_->doorbell();
    if (shm_->progress()) {
      idle_since = Clock::now();
      continue;
    }
    if (r.done.load(std::memory_order_acquire)) return;
    if (!r.is_send && tcp_->peer_said_bye(r.peer)) {
      // Everything the peer sent before its goodbye is in our ring or socket by now.
      shm_->progress();
      if (r.done.load(std::memory_order_acquire)) return;
      err = peer_gone_message(what, r.peer);
      break;
    }
    const auto now = Clock::now();
    if (now >= deadline) {
      err = timeout_message(what, r);
      break;
    }
    if (now - idle_since < spin) {
      sched_yield();
      continue;
    }
    shm_->sleep(bell, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
  // The caller may free its buffers while the exception unwinds: neither transport may touch
  // them after this.
  shm_->abandon();
  tcp_->abandon(err);
  MOE_FAIL("comm", err);
}

}  // namespace moe::comm
