// Shared-memory transport between ranks on the same host.
//
// Every rank creates one POSIX shared-memory segment (shm_open + mmap) holding its "doorbell"
// and one ring buffer per local peer: the ring from peer p to this rank. All local ranks map
// every local segment, and each segment is unlinked as soon as all peers have mapped it, so
// nothing is left in /dev/shm when processes die.
//
// A ring carries records: the same 64-byte MsgHeader as TCP (kind, sequence, tag, signature,
// offset and length of the chunk) followed by the chunk's bytes, padded to 64. The single
// writer publishes a record by advancing `tail` (release) after copying it in; the single
// reader consumes it and advances `head`. Receives are matched by (communicator, sequence,
// tag) exactly as over TCP: into the posted buffer, or into a stash when the data came first.
//
// Single copy (Open MPI's vader/CMA scheme): a message of at least `cma_min_bytes` does not go
// through the ring. The sender writes an offer record (header + its buffer's address); the
// receiver, once its receive is posted, copies the bytes straight from the sender's memory into
// its buffer with process_vm_readv(2) (Linux cross-memory attach) and answers with a done
// record, which completes the send. One copy instead of two, and one round trip per message
// instead of one per ring-full. At start-up every rank tries a read from every local peer; CMA
// is used only when all of them succeed (a container's seccomp profile or ptrace policy can
// forbid it), otherwise everything goes through the rings.
//
// Mapped single copy: when the offered bytes lie in a buffer from Communicator::alloc
// (transport/buffers.h), the offer also names that buffer's memfd. The receiver duplicates it
// with pidfd_getfd(2), maps it (once: mappings are kept per peer until the peer releases a
// buffer) and copies with plain loads and stores, or, for a receive that only feeds a
// reduction (Request::into_dst), reduces straight from the peer's memory. Where pidfd_getfd
// is refused it falls back to process_vm_readv for that peer.
//
// There is no progress thread: whoever waits (Transport::wait) moves data in both directions
// for every local peer, then sleeps on its doorbell (a futex word in shared memory) once a
// short spin found nothing to do. Writers and readers ring the other side's doorbell, and only
// make the futex_wake system call when someone sleeps there. The TCP connections stay open
// beside the rings: they report a peer that dies (kill -9) and carry abort messages.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/store.h"
#include "comm/transport/buffers.h"
#include "comm/transport/message.h"

namespace moe::comm {

class TcpTransport;

// What the shared-memory transport did, for tests and benchmarks (Communicator::transport_stats).
struct ShmStats {
  uint64_t cma_reads = 0;       // single-copy messages read with process_vm_readv
  uint64_t mapped_reads = 0;    // ... copied from a mapped Communicator::alloc buffer
  uint64_t mapped_reduces = 0;  // ... reduced straight from one (no staging copy)
  uint64_t maps = 0;            // peer buffers mapped (pidfd_getfd + mmap)
};

struct ShmOptions {
  // A ring that fits in L2 beside its peer's measured faster than bigger ones (1.7 vs 1.1
  // GB/s for a 64 MiB all_reduce of 2 ranks with 16 MiB rings).
  uint64_t ring_bytes = 1 << 20;     // MOE_COMM_SHM_RING: bytes of each directed ring
  uint64_t chunk_bytes = 256 << 10;  // MOE_COMM_SHM_CHUNK: largest record payload
  // MOE_COMM_SHM_SPIN_US: how long a waiter yields and retries before it sleeps. Spinning
  // cuts small-message latency (8 B all_reduce of 2 ranks: 7 vs 18 us) and a futex wake-up
  // costs ~0.1-0.5 ms in this VM (2 ranks, 4 MiB all_to_all: 6.0 GB/s busbw spinning 1 ms,
  // 2.1 GB/s spinning 30 us), but a long spin steals the core from the peers when there are
  // more local ranks than cores. So the default (-1) spins 1 ms when the local ranks fit on
  // the CPUs this process may use, and 50 us otherwise: there a yield hands the core to a
  // peer that has work, and the short spin still catches answers that come within a few
  // time slices (4 ranks on 2 cores, 4 KiB all_reduce: 0.21-0.28 against 0.05 GB/s without
  // it; 4 MiB +4-24%; 64 MiB unchanged; bench/comm/README.md).
  double spin_us = -1;
  // MOE_COMM_SHM_CMA: -1 use single copy where the start-up probe allows it, 0 never, 1 require
  // it (fail at start-up if it is not allowed).
  int cma = -1;
  uint64_t cma_min_bytes = 64 << 10;  // MOE_COMM_SHM_CMA_MIN: messages from this size
  // MOE_COMM_SHM_MAP: 1 map peers' Communicator::alloc buffers (where single copy is on and
  // pidfd_getfd is allowed), 0 read them by process_vm_readv like any other memory.
  bool map = true;
  static ShmOptions from_env();
};

class ShmTransport {
 public:
  // Collective over `local` (the global ranks that use shared memory with each other,
  // ascending, including `rank`): creates, exchanges through the store, maps and unlinks the
  // segments.
  ShmTransport(StoreClient& store, const std::string& prefix, int rank,
               const std::vector<int>& local, const ShmOptions& opt);
  ~ShmTransport();
  ShmTransport(const ShmTransport&) = delete;
  ShmTransport& operator=(const ShmTransport&) = delete;

  // Errors (malformed records, mismatched collectives) fail `tcp`, which tells every peer.
  void attach(TcpTransport* tcp) { tcp_ = tcp; }
  // Offers of bytes inside these buffers name the buffer, so peers can map it.
  void attach_buffers(std::shared_ptr<BufferRegistry> buffers) { buffers_ = std::move(buffers); }
  // A buffer of ours was released: peers drop their mappings of our buffers.
  void note_release();
  ShmStats stats();
  bool reaches(int peer) const { return peer >= 0 && peer < int(slot_.size()) && slot_[peer] >= 0; }
  int peers() const { return int(local_.size()) - 1; }
  const ShmOptions& options() const { return opt_; }
  bool single_copy() const { return cma_; }

  RequestPtr isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf, uint64_t n);
  // `into_dst`/`into_a`: see Request::into_dst.
  RequestPtr irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf, uint64_t n,
                   void* into_dst = nullptr, const void* into_a = nullptr);
  void begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig);
  void end_op(uint64_t comm_id);

  // After an error: never touch a caller's buffer again (progress() does nothing).
  void abandon();
  // Moves every record that can move now (sends into peers' rings, records out of ours);
  // never blocks on a peer. True if anything moved.
  bool progress();
  // The doorbell's value: read it before progress(), then sleep(value, ...) sleeps only if
  // nobody rang since.
  uint32_t doorbell() const;
  void sleep(uint32_t seen, Deadline until);
  // Wakes this process's sleepers (used when a TCP request completes).
  void ring_self();

 private:
  struct Segment;
  struct Ring;

  // The payload of a single-copy offer record (64 bytes in the ring).
  struct Offer {
    uint64_t addr = 0;  // the sender's buffer, in the sender's address space
    int64_t fd = -1;    // the sender's memfd of the Communicator::alloc buffer holding it, or -1
    uint64_t region = 0, region_bytes = 0, offset = 0;  // that buffer's id, length, addr - base
  };
  struct InMsg {
    RequestPtr req;
    std::unique_ptr<char[]> stash;  // bytes that came before the receive was posted
    uint64_t total = 0, got = 0;
    MsgHeader first{};
    Offer offer;  // single copy: the sender's buffer, offered before the receive
    bool offered = false;
  };
  struct PendingRead {
    MsgHeader hdr;
    Offer offer;
    RequestPtr req;
  };
  struct Mapping {
    char* base;
    uint64_t bytes;
  };
  struct SendOp {
    RequestPtr req;
    MsgHeader hdr;
    const char* data;
    uint64_t sent = 0;
    Offer offer;  // single copy
  };
  struct Peer {
    std::deque<SendOp> sendq;
    std::deque<MsgHeader> doneq;           // single-copy "done" records still to write
    std::map<MsgKey, RequestPtr> offered;  // our single-copy sends the peer has yet to read
    std::map<MsgKey, InMsg> inbox;
    // Offers whose receive is posted, to read on the next progress(), after our own sends
    // are out: reading in irecv would hold the peer's copy of our data back by a whole read.
    std::deque<PendingRead> readq;
    uint64_t out_tail = 0;  // our copy of the tail of the ring to the peer (we write it)
    uint64_t in_head = 0;   // our copy of the head of the ring from the peer (we read it)
    bool dead = false;      // sent a malformed record: stop reading its ring
    std::map<uint64_t, Mapping> mapped;  // the peer's alloc buffers we mapped, by region id
    uint32_t releases_seen = 0;          // the peer's release count when we last looked
    bool no_map = false;                 // pidfd_getfd refused: read this peer by CMA only
  };
  struct CurrentOp {
    uint64_t seq;
    OpSig sig;
  };

  Ring out_ring(int slot);  // ring from us to local peer `slot`
  Ring in_ring(int slot);   // ring from local peer `slot` to us
  bool push(int slot);      // mu_ held
  bool pull(int slot);      // mu_ held
  // The inbox entry of an arriving record (made if it is the message's first), after the
  // signature check.                                                            mu_ held
  std::map<MsgKey, InMsg>::iterator arrive(int slot, const MsgHeader& h, bool* inserted);
  void take_chunk(int slot, const MsgHeader& h, const Ring& r, uint64_t pos);  // mu_ held
  void take_offer(int slot, const MsgHeader& h, const Offer& o);               // mu_ held
  void take_done(int slot, const MsgHeader& h);                                // mu_ held
  // Copies an offered message from local peer `slot`'s memory (or reduces from it, see
  // Request::into_dst) and queues the done record; false (and the transport failed) if the
  // read did not work.                                                          mu_ held
  bool read_offer(int slot, const MsgHeader& h, const Offer& o, Request& req);
  // process_vm_readv of h.total bytes at `addr` in local peer `slot` into `dst`; false (and
  // the transport failed) if it did not work.                                  mu_ held
  bool read_by_cma(int slot, const MsgHeader& h, uint64_t addr, void* dst);
  // The offered bytes in our mapping of the peer's buffer, or nullptr: not an alloc buffer,
  // mapping refused (then CMA), or malformed (then the transport failed).      mu_ held
  const char* mapped_source(int slot, const MsgHeader& h, const Offer& o);
  void unmap_all(Peer& P);
  std::string probe_cma();  // "" if we can read every local peer's memory, else why not
  void check_sig_locked(int peer, const MsgHeader& h);
  void fail_locked(const std::string& why);
  void complete(Request& r);
  void ring(int slot);  // rings local peer `slot`'s doorbell

  int rank_;
  std::vector<int> local_;  // global ranks, ascending
  std::vector<int> slot_;   // global rank -> index in local_, or -1
  int me_ = 0;              // our index in local_
  ShmOptions opt_;
  TcpTransport* tcp_ = nullptr;
  std::vector<char*> seg_;  // mapped segment of each local rank
  std::vector<int> pidfd_;  // pidfd of each local rank's process (-1: none), for pidfd_getfd
  std::shared_ptr<BufferRegistry> buffers_;
  ShmStats stats_;
  size_t seg_bytes_ = 0;
  std::vector<Peer> peer_;  // by slot
  std::map<uint64_t, CurrentOp> current_;
  std::mutex mu_;
  bool failed_ = false;
  bool cma_ = false;  // single copy in use (every local rank probed every other successfully)
};

}  // namespace moe::comm
