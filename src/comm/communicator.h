// A communicator: a group of ranks that call the same collectives in the same order.
//
//   auto world = moe::comm::Communicator::from_env();     // under moe launch, torchrun, mpirun, srun
//   world->all_reduce(grad.data(), grad.data(), n, Dtype::kF32, ReduceOp::kAvg);
//   auto ep = world->split(world->rank() / 4, world->rank());   // groups of 4 consecutive ranks
//
// Every operation gets the next sequence number of its communicator; its messages carry it,
// with its kind and signature, so mismatched calls are reported by name. Errors (a dead peer,
// a deadline, a mismatch) throw moe::Error naming the operation, its number and the rank.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "comm/algorithms/algorithms.h"
#include "comm/compression.h"
#include "comm/env.h"
#include "comm/store.h"
#include "comm/transport/transport.h"

namespace moe::comm {

struct CommOptions {
  double timeout_s = 300;               // MOE_COMM_TIMEOUT: deadline of every operation
  std::string algo;                     // MOE_COMM_ALGO: all_reduce algorithm, "" = by size
  uint64_t rhd_max_bytes = 256 << 10;   // MOE_COMM_RHD_MAX: all_reduce up to this uses rhd
  uint64_t rd_max_bytes = 16 << 10;     // MOE_COMM_RD_MAX: ... and up to this rd (2-3 ranks:
                                        // rd up to MOE_COMM_RHD_MAX)
  uint64_t piece_bytes = 512 << 10;     // MOE_COMM_PIECE: ring pipeline granularity
  uint64_t hier_min_bytes = 1 << 20;    // MOE_COMM_HIER_MIN: auto all_reduce uses hier from here
  // Auto all_reduce uses direct between MOE_COMM_DIRECT_MIN and MOE_COMM_DIRECT_MAX bytes for 3
  // or more ranks that all reach each other by single copy (its scratch is (n-1)/n of the data).
  uint64_t direct_min_bytes = 16 << 20;
  uint64_t direct_max_bytes = 256 << 20;
  std::string algo_a2a;                 // MOE_COMM_ALGO_A2A: pairwise or two_level, "" = auto
  std::string transport = "auto";       // MOE_COMM_TRANSPORT: auto, shm or tcp
  TcpOptions tcp;
  ShmOptions shm;
  static CommOptions from_env();
};

// A pending asynchronous operation. wait() rethrows the operation's error, if any.
class Work {
 public:
  void wait();
  bool done() const;

 private:
  friend class Communicator;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};
using WorkPtr = std::shared_ptr<Work>;

// Memory from Communicator::alloc: zeroed, page-aligned, freed when the last move of it is
// destroyed (it may outlive the communicator). Any collective takes any memory, but between
// ranks of one host big messages in these buffers go faster: the peers map them and copy with
// plain loads and stores, or reduce straight from them, instead of process_vm_readv into a
// staging buffer (2 ranks, 64 MiB all_reduce: bench/comm/README.md). Like NCCL's registered
// user buffers, it pays when both sides of a message use them.
class CommBuffer {
 public:
  CommBuffer() = default;
  CommBuffer(CommBuffer&& o) noexcept { *this = std::move(o); }
  CommBuffer& operator=(CommBuffer&& o) noexcept;
  CommBuffer(const CommBuffer&) = delete;
  CommBuffer& operator=(const CommBuffer&) = delete;
  ~CommBuffer() { reset(); }

  void* data() const { return data_; }
  size_t size() const { return size_; }  // as asked for (the mapping is rounded up to a page)
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  void reset();

 private:
  friend class Communicator;
  std::shared_ptr<BufferRegistry> registry_;
  void* data_ = nullptr;
  size_t size_ = 0;
};

class Communicator {
 public:
  // Starts (or joins) the job described by `env`: rendezvous through the store, connect the
  // mesh, learn the host topology. Collective over all ranks of the job.
  static std::shared_ptr<Communicator> init(const JobEnv& env, const CommOptions& opt);
  static std::shared_ptr<Communicator> from_env();
  ~Communicator();

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  int global_rank() const { return ranks_[rank_]; }
  // Host topology: host index (0..num_hosts-1) of each rank of this communicator.
  const std::vector<int>& host_of() const { return host_of_; }
  int num_hosts() const { return num_hosts_; }
  int local_rank() const { return local_rank_; }  // among ranks on my host
  int local_size() const { return local_size_; }
  uint64_t last_seq() const { return seq_; }
  void set_algo(const std::string& algo);  // overrides MOE_COMM_ALGO for this communicator
  void set_algo_a2a(const std::string& algo);  // overrides MOE_COMM_ALGO_A2A
  // The algorithm all_reduce / all_to_allv would use for `bytes` (per rank) now.
  Algo all_reduce_algo(size_t bytes) const;
  Algo all_to_all_algo() const;
  // How this rank reaches the others: "shm to 3 ranks, tcp to 4 ranks".
  std::string transport_info() const;
  // Counters of the shared-memory transport's single-copy paths (shared by split communicators).
  ShmStats transport_stats() const;

  // A buffer the ranks of this host can map (see CommBuffer). Not collective.
  CommBuffer alloc(size_t bytes);

  // Ranks with the same color form a new communicator, ordered by (key, rank). A negative
  // color returns nullptr (the rank joins none). Collective over this communicator.
  std::shared_ptr<Communicator> split(int color, int key);

  // Collectives. Counts are elements; `in` may equal `out` (in place) unless noted.
  // `z` (compression.h): f32 values cross the links as bf16, fp8 or int8, with optional error
  // feedback; sum and avg only. Off by default.
  void all_reduce(const void* in, void* out, size_t count, Dtype t, ReduceOp op,
                  const Compression& z = {});
  // in: size()*recv_count elements; out: recv_count (this rank's block).
  void reduce_scatter(const void* in, void* out, size_t recv_count, Dtype t, ReduceOp op,
                      const Compression& z = {});
  // in: send_count elements; out: size()*send_count, rank i's block at i*send_count.
  void all_gather(const void* in, void* out, size_t send_count, Dtype t);
  void broadcast(void* buf, size_t count, Dtype t, int root);
  // in and out: size()*count elements; block i goes to / comes from rank i. Not in place.
  void all_to_all(const void* in, void* out, size_t count, Dtype t);
  // Counts and displacements (elements) per rank; not in place.
  void all_to_allv(const void* in, const std::vector<size_t>& send_counts,
                   const std::vector<size_t>& send_displs, void* out,
                   const std::vector<size_t>& recv_counts,
                   const std::vector<size_t>& recv_displs, Dtype t, Wire wire = Wire::kAsIs);
  void barrier();
  void send(const void* buf, size_t count, Dtype t, int dst);
  void recv(void* buf, size_t count, Dtype t, int src);

  // Asynchronous forms: the call returns at once and the operation runs on the
  // communicator's own thread, so the caller can compute meanwhile. Operations of one
  // communicator (async or not) run in call order; buffers must stay untouched until wait().
  WorkPtr all_reduce_async(const void* in, void* out, size_t count, Dtype t, ReduceOp op,
                           const Compression& z = {});
  WorkPtr reduce_scatter_async(const void* in, void* out, size_t recv_count, Dtype t,
                               ReduceOp op, const Compression& z = {});
  WorkPtr all_gather_async(const void* in, void* out, size_t send_count, Dtype t);
  WorkPtr broadcast_async(void* buf, size_t count, Dtype t, int root);
  WorkPtr all_to_allv_async(const void* in, std::vector<size_t> send_counts,
                            std::vector<size_t> send_displs, void* out,
                            std::vector<size_t> recv_counts, std::vector<size_t> recv_displs,
                            Dtype t, Wire wire = Wire::kAsIs);

  // Payload bytes this process has sent since it started (all its communicators together),
  // per collective kind: in all, and to ranks on other hosts. Differences between two reads
  // give a step's traffic.
  struct Traffic {
    uint64_t sent[size_t(OpKind::kCount)] = {};
    uint64_t inter_host[size_t(OpKind::kCount)] = {};
  };
  Traffic traffic() const;

 private:
  struct Shared;  // the store and transport, shared with communicators split from this one
  Communicator() = default;
  template <class F>
  void run(OpKind kind, OpSig sig, F&& body);
  OpLabel label(const OpSig& sig, uint64_t seq) const;  // names the operation in errors
  WorkPtr enqueue(std::function<void()> f);
  void sync_point();  // a blocking call waits for queued async work first
  void worker_loop();

  std::shared_ptr<Shared> shared_;
  std::vector<int> ranks_;  // global rank of each member
  int rank_ = 0;
  uint64_t comm_id_ = 0;
  uint64_t seq_ = 0;
  std::vector<size_t> a2a_counts_, a2a_displs_;  // all_to_all's counts, kept between calls
  uint64_t splits_ = 0;
  std::vector<uint64_t> p2p_send_, p2p_recv_;
  std::vector<int> host_of_;
  int num_hosts_ = 1, local_rank_ = 0, local_size_ = 1;
  CommOptions opt_;
  Algo algo_ = Algo::kAuto, algo_a2a_ = Algo::kAuto;
  ScratchArena scratch_;
  // Async execution: one worker thread, started on first use.
  std::mutex q_mu_;
  std::condition_variable q_cv_;
  std::deque<std::pair<std::function<void()>, WorkPtr>> queue_;
  bool busy_ = false, stopping_ = false;
  std::thread worker_;
  std::thread::id worker_id_;
};

}  // namespace moe::comm
