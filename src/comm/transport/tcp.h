// TCP transport: a full mesh of authenticated sockets (several per peer), driven by one epoll
// progress thread. Sends are queued and written by the thread; receives are matched by
// (communicator, sequence, tag) and land directly in the caller's buffer when it was posted
// first, or in a stash (eager, like MPI's eager protocol) when the data came first.
//
// A peer whose socket closes or errors fails the whole transport at once: every pending and
// later wait throws an error naming that rank, so a dead rank never leaves the others hanging.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "comm/socket.h"
#include "comm/store.h"
#include "comm/transport/message.h"

namespace moe::comm {

struct TcpOptions {
  int sockets_per_peer = 2;        // MOE_COMM_SOCKETS; chunks of big messages are striped
  int socket_buffer = 4 << 20;     // MOE_COMM_SOCKET_BUFFER bytes, SO_SNDBUF and SO_RCVBUF
  uint64_t chunk_bytes = 1 << 20;  // MOE_COMM_CHUNK: largest chunk put on one socket at once
  double connect_timeout_s = 120;  // MOE_COMM_CONNECT_TIMEOUT
  std::string bind_addr;           // MOE_COMM_IFADDR: address other ranks dial (default: the
                                   // one our store connection leaves from)
  // MOE_COMM_TCP_CONGESTION: congestion control of the sockets between ranks. Unset: reno to
  // ranks on this host, the host's default to other hosts. Within a host TCP loses nothing, so
  // congestion control only decides how fast the window opens and whether sends are paced:
  // bbr (this VM's default) paces every socket (11-46% of busbw here), and cubic fell behind
  // with four ranks on two cores (likely HyStart leaving slow start early); reno did neither
  // (bench/comm/README.md). A name applies to every peer (a name the host refuses stops the
  // job at start, saying what it allows); "system" keeps the host's default everywhere.
  std::string congestion;
  // A caller waiting for a message of up to MOE_COMM_TCP_DRIVE_MAX bytes runs the sockets
  // itself (polling, then sleeping in epoll) while the progress thread sleeps, instead of
  // sleeping until the progress thread wakes it: one wake-up less per message, and none while
  // it polls. Bigger messages stay with the progress thread, which then reads while the
  // caller reduces. 0 turns it off.
  uint64_t drive_max_bytes = 256 << 10;
  // MOE_COMM_TCP_SPIN_US: how long a driving waiter polls (yielding the core) before it sleeps
  // in epoll. -1: 1000 when this host's ranks fit on its CPUs, else 50 (as shared memory).
  double spin_us = -1;
  // Test hook: emulate a slow link (the kernel here has tbf but no netem). Every message to an
  // emulated peer leaves no earlier than a token bucket of `emu_gbps` allows, plus
  // `emu_latency_us`. The bucket is per link (per peer, shared by its sockets). Scope "remote"
  // emulates links to other hosts only, "all" every link (and then shared memory is off).
  double emu_latency_us = 0;         // MOE_COMM_EMU_LATENCY_US, e.g. 200
  double emu_gbps = 0;               // MOE_COMM_EMU_GBPS, e.g. 1.25 (10 Gbit/s), or
                                     // MOE_COMM_EMU_BW_MBPS / 1000; 0 = no cap
  std::string emu_scope = "remote";  // MOE_COMM_EMU_SCOPE
  bool emulating() const { return emu_latency_us > 0 || emu_gbps > 0; }
  static TcpOptions from_env();
};

class TcpTransport {
 public:
  // Collective over all `size` ranks: publishes our address under `prefix` in the store and
  // connects the full mesh.
  TcpTransport(StoreClient& store, const std::string& prefix, const std::string& token, int rank,
               int size, const TcpOptions& opt);
  ~TcpTransport();
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  RequestPtr isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf, uint64_t n);
  RequestPtr irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf, uint64_t n);
  // Waits for `r`; throws an Error starting with `what` ("all_reduce #5 on rank 0 of 4") if the
  // deadline passes, the peer died, or the transport failed.
  void wait(Request& r, Deadline deadline, const OpLabel& what);

  // Declares the collective this rank is in on `comm_id`, so arriving headers of a different
  // collective at the same sequence number are reported.
  void begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig);
  void end_op(uint64_t comm_id);

  // Marks which peers the emulation hook applies to (see TcpOptions::emu_*).
  void set_emulated_peers(const std::vector<bool>& emulate);

  bool failed() const { return failed_.load(); }
  std::string failure() const;
  // Fails the transport (the shared-memory transport's errors go this way, so every peer
  // hears of them too).
  void fail(const std::string& why);
  // Fails the transport and lets go of every caller buffer: the progress thread never again
  // reads or writes memory of a pending send or receive (it discards incoming payload and
  // pads a half-sent chunk with zeros). Called before an operation throws, since the caller
  // may free its buffers as the exception unwinds.
  void abandon(const std::string& why);
  // Ranks on this host (by the communicator's topology): with MOE_COMM_TCP_CONGESTION unset
  // their sockets switch to reno (see TcpOptions::congestion).
  void set_local_peers(const std::vector<bool>& local);
  // The congestion control of the sockets to peers, as the kernel reports it: "reno", or
  // "reno on this host, bbr to other hosts" ("" with no peer over TCP).
  std::string congestion() const;
  // The peer closed its communicator on purpose (said goodbye on every socket).
  bool peer_said_bye(int peer) const;
  // Called (from the progress thread, briefly) whenever a request completes or the transport
  // fails: the combined transport sleeps on a futex and needs waking.
  void set_wake_hook(std::function<void()> hook);

 private:
  struct OutChunk {
    MsgHeader hdr;
    const char* data;
    size_t sent = 0;  // bytes of header + data written
    RequestPtr req;
    Clock::time_point ready{};  // emulated links: not before this
  };
  struct Stash {  // a pooled buffer (see stash_pool_)
    std::unique_ptr<char[]> data;
    uint64_t cap = 0;
    char* get() const { return data.get(); }
    explicit operator bool() const { return bool(data); }
  };
  struct InMsg {
    RequestPtr req;  // the posted receive, if any
    Stash stash;     // chunks that started before the receive was posted
    // Finished chunks (offset, length) in the stash that wait for the receive to be posted,
    // which copies them over; chunks that start after it go straight to its buffer.
    std::vector<std::pair<uint64_t, uint64_t>> stashed;
    uint64_t total = 0, got = 0;
    MsgHeader first{};
  };
  struct Sock {
    int fd = -1;
    int peer = -1;
    bool want_out = false;
    bool closed = false;
    bool timed = false;    // front chunk waits for its emulated release time
    bool writing = false;  // a caller writes to it outside the lock (isend's fast path)
    std::deque<OutChunk> out;
    MsgHeader hdr{};
    size_t hdr_got = 0;
    char* dst = nullptr;
    size_t left = 0;
    InMsg* msg = nullptr;
    MsgKey key{};
    bool to_user = false;        // the payload lands in a caller's buffer
    bool to_stash = false;       // ... or in its message's stash
    bool discard = false;        // ... which was abandoned: read the rest into a sink
    bool got_bye = false;        // the peer said goodbye on this socket
    bool reading_abort = false;  // the payload is a failed peer's reason
    std::string abort_text;
    InMsg abort_msg;
  };
  struct Peer {
    std::vector<std::unique_ptr<Sock>> socks;
    std::map<MsgKey, InMsg> inbox;
    uint64_t next_sock = 0;
    bool bye = false;      // said goodbye on every socket: later receives can never complete
    bool aborted = false;  // sent us its failure: it needs no news from us
    bool emulate = false;
    bool local = false;             // on this host (set_local_peers)
    Clock::time_point link_free{};  // emulated link busy until
    int open = 0;                   // sockets still open
  };
  struct CurrentOp {
    uint64_t seq;
    OpSig sig;
  };

  void connect_mesh(StoreClient& store, const std::string& prefix, const std::string& token);
  // tcp_io.cpp: the socket engine.
  static constexpr size_t kSinkBytes = 64 << 10;  // bytes read at once into sink_ to discard
  // How long the progress thread stays asleep after a waiter drove the sockets (see wait()).
  static constexpr auto kDriveLinger = std::chrono::milliseconds(1);
  static void epoll_mod(int ep, int fd, void* ptr, uint32_t events, int op);
  void progress_loop();
  // Runs the sockets for `r` until it is done, the transport failed, its peer said goodbye or
  // the deadline passed; the caller has set driving_.
  void drive(Request& r, Deadline deadline);
  // One round of the sockets: parked sockets that are due, then those epoll says are ready,
  // waiting up to `timeout_ns`. Run by one thread at a time (poll_mu_ held). Returns the
  // events handled, -1 if epoll failed.
  int poll_once(int64_t timeout_ns);
  void on_readable(Sock& s);
  void on_writable(Sock& s);
  // All three run with mu_ held.
  void header_arrived(Sock& s);
  void chunk_done(Sock& s);
  void complete(Request& r);
  void fail_locked(const std::string& why);
  void check_sig_locked(int peer, const MsgHeader& h);
  void enqueue_locked(Sock& s, OutChunk c);
  bool try_write(Sock& s, OutChunk& c);  // mu_ held, s.out empty: true if all written
  void peer_closed(Sock& s, const std::string& how);
  Stash take_stash(uint64_t bytes);  // mu_ held
  void give_stash(Stash s);          // mu_ held
  void erase_msg(Peer& p, std::map<MsgKey, InMsg>::iterator it);

  int rank_, size_;
  TcpOptions opt_;
  std::vector<Peer> peers_;
  Fd epoll_, wake_;
  std::thread progress_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::mutex poll_mu_;  // held by the one thread running poll_once
  // A waiter runs the sockets (drive_max_bytes). The progress thread sleeps while it does and
  // for kDriveLinger after, so back-to-back waits need no hand-off, unless a wait that is not
  // driven calls it back sooner. All under mu_.
  bool driving_ = false;
  bool polling_ = false;  // the progress thread is in (or about to enter) poll_once
  Clock::time_point last_drive_{};
  std::condition_variable drive_cv_;  // with mu_: calls the lingering progress thread back
  std::atomic<bool> failed_{false};
  std::string error_;
  std::string abort_payload_;  // our own failure, sent to every peer once
  std::map<uint64_t, CurrentOp> current_;
  // Stash buffers are reused: in a VM each fresh page faults, which cost more than the copy.
  std::vector<Stash> stash_pool_;
  std::vector<Sock*> timed_;  // sockets held back by the emulation hook
  std::function<void()> wake_hook_;
  // Guards the progress thread's use of caller buffers against abandon(). Lock order: mu_,
  // then user_mu_ (never the other way).
  std::mutex user_mu_;
  bool detached_ = false;
  std::unique_ptr<char[]> sink_;  // where abandoned payload goes
};

}  // namespace moe::comm
