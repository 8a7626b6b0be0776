// What the algorithms talk to (through OpContext): one transport per job that sends to each
// peer over shared memory when the peer is on this host (transport/shm.h) and over TCP
// otherwise (transport/tcp.h). The TCP mesh always exists: it is how a dead peer is noticed
// and how a failing rank's reason reaches everyone, whatever carries the data.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/transport/shm.h"
#include "comm/transport/tcp.h"

namespace moe::comm {

class Transport {
 public:
  // Collective over all ranks. `shm_group`: the global ranks (ascending, including `rank`)
  // this rank reaches over shared memory; fewer than two means TCP only.
  Transport(StoreClient& store, const std::string& prefix, const std::string& token, int rank,
            int size, const TcpOptions& tcp, const ShmOptions& shm,
            const std::vector<int>& shm_group);
  ~Transport();

  RequestPtr isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf, uint64_t n);
  // `into_dst`/`into_a`: a receive that only feeds dst = a op message (Request::into_dst).
  RequestPtr irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf, uint64_t n,
                   void* into_dst = nullptr, const void* into_a = nullptr);
  // Waits for `r`; throws an Error starting with `what` if the deadline passes, the peer died
  // or shut down, or the transport failed. While waiting it moves every shared-memory message
  // it can, so ranks never wait on each other's progress.
  void wait(Request& r, Deadline deadline, const OpLabel& what);
  void begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig);
  void end_op(uint64_t comm_id);
  void set_emulated_peers(const std::vector<bool>& emulate) { tcp_->set_emulated_peers(emulate); }
  void set_local_peers(const std::vector<bool>& local) { tcp_->set_local_peers(local); }

  bool failed() const { return tcp_->failed(); }
  std::string failure() const { return tcp_->failure(); }
  bool via_shm(int peer) const { return shm_ && shm_->reaches(peer) && peer != rank_; }
  // Messages to `peer` from ShmOptions::cma_min_bytes go by single copy.
  bool single_copy_to(int peer) const { return via_shm(peer) && shm_->single_copy(); }
  // "shm to 3 ranks, tcp to 4 ranks"
  std::string describe() const;
  // Communicator::alloc's buffers: peers on this host map them (transport/buffers.h).
  const std::shared_ptr<BufferRegistry>& buffers() const { return buffers_; }
  ShmStats shm_stats() const { return shm_ ? shm_->stats() : ShmStats{}; }

 private:
  int rank_, size_;
  std::shared_ptr<BufferRegistry> buffers_ = std::make_shared<BufferRegistry>();
  std::unique_ptr<ShmTransport> shm_;
  std::unique_ptr<TcpTransport> tcp_;
};

}  // namespace moe::comm
