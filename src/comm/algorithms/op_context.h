// The only view of the world an algorithm has: the ranks of its communicator as 0..size-1 and
// Pair-style send/recv to any of them, every wait bounded by the operation's deadline. The
// context stamps each message with the collective's kind, sequence number and signature.
// Whether a peer is reached over shared memory or TCP is the transport's business.
//
// Hierarchical algorithms also see which host each rank is on, and run other algorithms on
// groups of ranks through sub(): a context whose ranks are a subset, with its own tag range.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "comm/reduce.h"
#include "comm/transport/transport.h"

namespace moe::comm {

using Handle = RequestPtr;

// Payload bytes this process sent, per collective kind, since it started: all of them, and
// those to ranks on other hosts (what crosses the network). Shared by a communicator and its
// splits; written by the ranks' operation threads, read by anyone.
struct TrafficCounters {
  std::atomic<uint64_t> sent[size_t(OpKind::kCount)]{};
  std::atomic<uint64_t> inter_host[size_t(OpKind::kCount)]{};
};

// Scratch buffers kept from one operation to the next: fresh pages cost a page fault each
// (expensive in VMs), which made every big collective several times slower.
class ScratchArena {
 public:
  void reset() { next_ = 0; }
  char* get(size_t bytes) {
    if (next_ == bufs_.size()) bufs_.emplace_back();
    Buf& b = bufs_[next_++];
    if (b.size < bytes || !b.data) {
      b.data.reset(new char[bytes + 64]);
      b.size = bytes;
    }
    return b.data.get();
  }

 private:
  struct Buf {
    std::unique_ptr<char[]> data;
    size_t size = 0;
  };
  std::vector<Buf> bufs_;
  size_t next_ = 0;
};

class OpContext {
 public:
  OpContext(Transport& t, const std::vector<int>& ranks, const std::vector<int>& host_of,
            int rank, uint64_t comm_id, uint64_t seq, const OpSig& sig, Deadline deadline,
            const OpLabel& what, ScratchArena& arena, TrafficCounters* traffic = nullptr)
      : t_(t), ranks_(&ranks), host_of_(&host_of), rank_(rank), comm_id_(comm_id), seq_(seq),
        sig_(sig), deadline_(deadline), what_(what), arena_(arena), traffic_(traffic) {
    arena_.reset();
  }

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_->size()); }
  Dtype dtype() const { return static_cast<Dtype>(sig_.dtype); }
  ReduceOp op() const { return static_cast<ReduceOp>(sig_.redop); }
  // Compressed operations (sig.wire set) move encoded bytes: their counts are bytes.
  size_t elem() const { return sig_.wire ? 1 : comm_dtype_size(dtype()); }
  // Host index (0..) of each rank of this context, as the communicator's topology says.
  const std::vector<int>& host_of() const { return *host_of_; }

  // `peer` is a rank of this communicator; `tag` names the message within the operation.
  Handle send(int peer, const void* buf, size_t bytes, uint32_t tag) {
    if (traffic_) {
      const size_t k = size_t(sig_.kind);
      traffic_->sent[k].fetch_add(bytes, std::memory_order_relaxed);
      if ((*host_of_)[peer] != (*host_of_)[rank_])
        traffic_->inter_host[k].fetch_add(bytes, std::memory_order_relaxed);
    }
    return t_.isend((*ranks_)[peer], MsgKey{comm_id_, seq_, tag_base_ + tag}, sig_, buf, bytes);
  }
  Handle recv(int peer, void* buf, size_t bytes, uint32_t tag) {
    return t_.irecv((*ranks_)[peer], MsgKey{comm_id_, seq_, tag_base_ + tag}, sig_, buf, bytes);
  }
  // A receive whose bytes only feed dst = a op (message), count elements. Where the peer's
  // buffer is mapped (Communicator::alloc on both sides of a shared-memory link) the transport
  // reduces straight from it; otherwise the bytes land in `scratch` and wait_reduce reduces.
  // Either way dst is written only by the time wait_reduce returns, and may be written any
  // time after this call: it must not be read by a send still in flight.
  Handle recv_reduce(int peer, void* scratch, void* dst, const void* a, size_t count,
                     uint32_t tag) {
    return t_.irecv((*ranks_)[peer], MsgKey{comm_id_, seq_, tag_base_ + tag}, sig_, scratch,
                    count * elem(), dst, a);
  }
  void wait_reduce(const Handle& h) {
    wait(h);
    if (!h->reduced) reduce(h->into_dst, h->into_a, h->buf, h->size / elem());
  }
  void wait(const Handle& h) { t_.wait(*h, deadline_, what_); }
  void wait_all(std::vector<Handle>& hs) {
    for (auto& h : hs) wait(h);
    hs.clear();
  }
  // dst = a op b over n elements of the operation's type.
  void reduce(void* dst, const void* a, const void* b, size_t n) const {
    reduce_into(dst, a, b, n, dtype(), op());
  }
  // Scratch memory that lives for the whole operation.
  char* scratch(size_t bytes) { return arena_.get(bytes); }

  // A context over `members` (ranks of this context, in the order they get ranks 0.. there;
  // this rank must be one), whose tags are offset by `phase` << 28 so the phases of one
  // operation never mix. Scratch comes from the same arena and stays valid.
  OpContext sub(const std::vector<int>& members, uint32_t phase) const {
    OpContext c(*this);
    c.own_ranks_ = std::make_shared<std::vector<int>>();
    c.own_hosts_ = std::make_shared<std::vector<int>>();
    c.rank_ = -1;
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i] == rank_) c.rank_ = static_cast<int>(i);
      c.own_ranks_->push_back((*ranks_)[members[i]]);
      c.own_hosts_->push_back((*host_of_)[members[i]]);
    }
    MOE_CHECK(c.rank_ >= 0, "comm", "sub-context without this rank");
    c.ranks_ = c.own_ranks_.get();
    c.host_of_ = c.own_hosts_.get();
    c.tag_base_ = phase << 28;
    return c;
  }

 private:
  Transport& t_;
  std::shared_ptr<std::vector<int>> own_ranks_, own_hosts_;  // a sub-context's lists
  const std::vector<int>* ranks_;    // global rank of each member
  const std::vector<int>* host_of_;  // host index of each member
  int rank_;
  uint64_t comm_id_, seq_;
  uint32_t tag_base_ = 0;
  OpSig sig_;
  Deadline deadline_;
  OpLabel what_;
  ScratchArena& arena_;
  TrafficCounters* traffic_;
};

}  // namespace moe::comm
