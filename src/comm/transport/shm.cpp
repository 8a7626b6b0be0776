#include "comm/transport/shm.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <random>
#include <thread>

#include "comm/reduce.h"
#include "comm/transport/tcp.h"

namespace moe::comm {

namespace {

constexpr uint64_t kSegMagic = 0x314d48534d454dull;  // "MEMSHM1"
constexpr size_t kSegHeaderBytes = 4096;
constexpr size_t kRingCtlBytes = 128;

// Both live in shared memory: only lock-free (address-free) atomics and plain data.
struct SegHeader {
  uint64_t magic;
  uint64_t ring_bytes;
  int32_t nlocal;
  int32_t rank;
  int32_t pid;         // for single-copy reads of this rank's memory (process_vm_readv)
  uint64_t self_addr;  // where this rank mapped its own segment (the start-up probe reads it)
  std::atomic<uint32_t> abandoned;  // set when this rank gave up: its buffers may be gone
  std::atomic<uint32_t> releases;   // Communicator::alloc buffers this rank released so far
  alignas(64) std::atomic<uint32_t> doorbell;  // futex word: bumped by whoever has news for us
  std::atomic<uint32_t> sleepers;              // threads of ours asleep on it
};
struct RingCtl {
  alignas(64) std::atomic<uint64_t> tail;  // bytes ever written (by the one writer)
  alignas(64) std::atomic<uint64_t> head;  // bytes ever consumed (by the one reader)
};
static_assert(sizeof(RingCtl) == kRingCtlBytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

uint64_t round64(uint64_t x) { return (x + 63) & ~uint64_t(63); }

// Bytes of one ring record: the header, then the chunk, or the offer's 64-byte payload.
uint64_t record_bytes(const MsgHeader& h) {
  return 64 + ((h.flags & kFlagCmaOffer) ? 64 : round64(h.chunk_len));
}

// What the start-up probe reads and compares: magic, ring_bytes, nlocal, rank.
constexpr size_t kProbeBytes = 24;

// Mappings of one peer's alloc buffers kept at most (the oldest goes first): a program that
// allocates and frees without end must not pin all of that memory through its peers.
constexpr size_t kMaxMappedPerPeer = 32;

int pidfd_open(int pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
int pidfd_getfd(int pidfd, int fd) {
  return static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
}

long futex(std::atomic<uint32_t>* addr, int op, uint32_t val, const timespec* ts) {
  // Not FUTEX_PRIVATE: the word is shared between processes.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op, val, ts, nullptr, 0);
}

SegHeader* header_of(char* seg) { return reinterpret_cast<SegHeader*>(seg); }

}  // namespace

// A view of one directed ring: its control block and data area inside a mapped segment.
struct ShmTransport::Ring {
  RingCtl* ctl;
  char* data;
  uint64_t cap;
  // Copies with wrap-around; positions are the ever-growing byte counters.
  void put(uint64_t pos, const void* src, uint64_t n) const {
    const uint64_t at = pos % cap, first = std::min(n, cap - at);
    std::memcpy(data + at, src, first);
    if (n > first) std::memcpy(data, static_cast<const char*>(src) + first, n - first);
  }
  void get(uint64_t pos, void* dst, uint64_t n) const {
    const uint64_t at = pos % cap, first = std::min(n, cap - at);
    std::memcpy(dst, data + at, first);
    if (n > first) std::memcpy(static_cast<char*>(dst) + first, data, n - first);
  }
};

ShmOptions ShmOptions::from_env() {
  ShmOptions o;
  o.ring_bytes = static_cast<uint64_t>(env_int("MOE_COMM_SHM_RING", int64_t(o.ring_bytes)));
  MOE_CHECK(o.ring_bytes >= (64 << 10) && o.ring_bytes % 4096 == 0, "comm.shm",
            "MOE_COMM_SHM_RING=", o.ring_bytes, " must be a multiple of 4096, at least 64 KiB");
  o.chunk_bytes = static_cast<uint64_t>(env_int("MOE_COMM_SHM_CHUNK", int64_t(o.chunk_bytes)));
  MOE_CHECK(o.chunk_bytes >= 4096, "comm.shm", "MOE_COMM_SHM_CHUNK must be at least 4096 bytes");
  // A record must fit in half a ring, so reader and writer can work on two at once.
  o.chunk_bytes = std::min(o.chunk_bytes, o.ring_bytes / 2 - 64);
  o.spin_us = env_double("MOE_COMM_SHM_SPIN_US", o.spin_us);
  o.cma = static_cast<int>(env_int("MOE_COMM_SHM_CMA", o.cma));
  MOE_CHECK(o.cma >= -1 && o.cma <= 1, "comm.shm", "MOE_COMM_SHM_CMA=", o.cma,
            " must be -1 (single copy where allowed), 0 (never) or 1 (required)");
  o.cma_min_bytes =
      static_cast<uint64_t>(env_int("MOE_COMM_SHM_CMA_MIN", int64_t(o.cma_min_bytes)));
  MOE_CHECK(o.cma_min_bytes >= 1, "comm.shm", "MOE_COMM_SHM_CMA_MIN must be at least 1 byte");
  const int64_t map = env_int("MOE_COMM_SHM_MAP", 1);
  MOE_CHECK(map == 0 || map == 1, "comm.shm", "MOE_COMM_SHM_MAP=", map,
            " must be 1 (map peers' Communicator::alloc buffers) or 0 (never)");
  o.map = map == 1;
  return o;
}

ShmTransport::ShmTransport(StoreClient& store, const std::string& prefix, int rank,
                           const std::vector<int>& local, const ShmOptions& opt)
    : rank_(rank), local_(local), opt_(opt) {
  const int nl = static_cast<int>(local_.size());
  slot_.assign(*std::max_element(local_.begin(), local_.end()) + 1, -1);
  for (int i = 0; i < nl; ++i) {
    slot_[local_[i]] = i;
    if (local_[i] == rank_) me_ = i;
  }
  peer_ = std::vector<Peer>(nl);
  if (opt_.spin_us < 0) opt_.spin_us = default_spin_us(nl);
  seg_.assign(nl, nullptr);
  seg_bytes_ = kSegHeaderBytes + size_t(nl) * (kRingCtlBytes + opt_.ring_bytes);

  // Our segment, under a name nobody else can be using (pid and random bits).
  std::random_device rd;
  char name[96];
  std::snprintf(name, sizeof name, "/moe-comm-%d-r%d-%08x%08x", int(getpid()), rank_, rd(), rd());
  const int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  MOE_CHECK(fd >= 0, "comm.shm", "shm_open(", name, "): ", std::strerror(errno),
            " (is /dev/shm mounted and writable? MOE_COMM_TRANSPORT=tcp avoids shared memory)");
  auto unlink_mine = [&] { shm_unlink(name); };
  if (ftruncate(fd, off_t(seg_bytes_)) != 0) {
    const int e = errno;
    ::close(fd);
    unlink_mine();
    MOE_FAIL("comm.shm", "ftruncate(", name, ", ", seg_bytes_, "): ", std::strerror(e));
  }
  void* p = mmap(nullptr, seg_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    const int e = errno;
    unlink_mine();
    MOE_FAIL("comm.shm", "mmap of ", seg_bytes_, " bytes: ", std::strerror(e));
  }
  seg_[me_] = static_cast<char*>(p);
  SegHeader* h = new (seg_[me_]) SegHeader{};
  h->magic = kSegMagic;
  h->ring_bytes = opt_.ring_bytes;
  h->nlocal = nl;
  h->rank = rank_;
  h->pid = static_cast<int32_t>(getpid());
  h->self_addr = reinterpret_cast<uint64_t>(seg_[me_]);
  for (int i = 0; i < nl; ++i)
    new (seg_[me_] + kSegHeaderBytes + i * (kRingCtlBytes + opt_.ring_bytes)) RingCtl{};

  // Exchange names, map the others' segments, and unlink ours once every peer has it mapped
  // (the store's own timeout, MOE_COMM_CONNECT_TIMEOUT, bounds the waits).
  try {
    store.set(prefix + "shm/name/" + std::to_string(rank_), name);
    for (int i = 0; i < nl; ++i) {
      if (i == me_) continue;
      const std::string other = store.get(prefix + "shm/name/" + std::to_string(local_[i]));
      const int ofd = shm_open(other.c_str(), O_RDWR, 0);
      MOE_CHECK(ofd >= 0, "comm.shm", "rank ", rank_, " cannot open rank ", local_[i],
                "'s shared memory ", other, ": ", std::strerror(errno),
                " (are these ranks really on one host? check MOE_HOST_ID, or set "
                "MOE_COMM_TRANSPORT=tcp)");
      void* q = mmap(nullptr, seg_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, ofd, 0);
      ::close(ofd);
      MOE_CHECK(q != MAP_FAILED, "comm.shm", "mmap of rank ", local_[i],
                "'s segment: ", std::strerror(errno));
      seg_[i] = static_cast<char*>(q);
      const SegHeader* oh = header_of(seg_[i]);
      MOE_CHECK(oh->magic == kSegMagic && oh->nlocal == nl && oh->ring_bytes == opt_.ring_bytes &&
                    oh->rank == local_[i],
                "comm.shm", "rank ", local_[i], "'s shared memory does not match ours (",
                oh->nlocal, " local ranks, rings of ", oh->ring_bytes, " bytes, vs ", nl, " and ",
                opt_.ring_bytes, "): set MOE_COMM_SHM_RING the same on every rank");
    }
    // Single copy only if every rank can read every local peer's memory; the values say.
    const std::string cannot = opt_.cma == 0 ? "MOE_COMM_SHM_CMA=0" : probe_cma();
    store.set(prefix + "shm/mapped/" + std::to_string(rank_), cannot.empty() ? "cma" : cannot);
    std::vector<std::string> keys;
    for (int i = 0; i < nl; ++i)
      if (i != me_) keys.push_back(prefix + "shm/mapped/" + std::to_string(local_[i]));
    store.wait(keys);
    std::string why_not = cannot.empty() ? "" : "rank " + std::to_string(rank_) + ": " + cannot;
    for (int i = 0, k = 0; i < nl; ++i) {
      if (i == me_) continue;
      const std::string v = store.get(keys[k++]);
      if (v != "cma" && why_not.empty()) why_not = "rank " + std::to_string(local_[i]) + ": " + v;
    }
    MOE_CHECK(opt_.cma != 1 || why_not.empty(), "comm.shm",
              "MOE_COMM_SHM_CMA=1 but single-copy reads between local ranks are not possible (",
              why_not, "); unset MOE_COMM_SHM_CMA to copy through the rings instead");
    cma_ = why_not.empty();
    // Mapped single copy takes the peer's memfd through its pidfd: the same permission as CMA.
    pidfd_.assign(nl, -1);
    for (int i = 0; cma_ && opt_.map && i < nl; ++i)
      if (i != me_) pidfd_[i] = pidfd_open(header_of(seg_[i])->pid);
  } catch (...) {
    unlink_mine();
    for (char* s : seg_)
      if (s) munmap(s, seg_bytes_);
    throw;
  }
  unlink_mine();
}

std::string ShmTransport::probe_cma() {
  for (int i = 0; i < int(seg_.size()); ++i) {
    if (i == me_) continue;
    const SegHeader* oh = header_of(seg_[i]);
    char got[kProbeBytes];
    iovec local{got, kProbeBytes};
    iovec remote{reinterpret_cast<void*>(oh->self_addr), kProbeBytes};
    const ssize_t n = process_vm_readv(oh->pid, &local, 1, &remote, 1, 0);
    const int e = errno;
    if (n < 0)
      return "process_vm_readv from rank " + std::to_string(local_[i]) + " (pid " +
             std::to_string(oh->pid) + "): " + std::strerror(e) +
             (e == EPERM ? " (ptrace policy or a seccomp profile forbids it)" : "");
    if (n != ssize_t(kProbeBytes) || std::memcmp(got, seg_[i], kProbeBytes) != 0)
      return "pid " + std::to_string(oh->pid) + " of rank " + std::to_string(local_[i]) +
             " is another process here (a separate pid namespace?)";
  }
  return "";
}

ShmTransport::~ShmTransport() {
  for (Peer& P : peer_) unmap_all(P);
  for (int fd : pidfd_)
    if (fd >= 0) ::close(fd);
  for (char* s : seg_)
    if (s) munmap(s, seg_bytes_);
}

ShmTransport::Ring ShmTransport::out_ring(int slot) {
  char* base = seg_[slot] + kSegHeaderBytes + size_t(me_) * (kRingCtlBytes + opt_.ring_bytes);
  return Ring{reinterpret_cast<RingCtl*>(base), base + kRingCtlBytes, opt_.ring_bytes};
}

ShmTransport::Ring ShmTransport::in_ring(int slot) {
  char* base = seg_[me_] + kSegHeaderBytes + size_t(slot) * (kRingCtlBytes + opt_.ring_bytes);
  return Ring{reinterpret_cast<RingCtl*>(base), base + kRingCtlBytes, opt_.ring_bytes};
}

uint32_t ShmTransport::doorbell() const {
  return header_of(seg_[me_])->doorbell.load(std::memory_order_seq_cst);
}

void ShmTransport::ring(int slot) {
  SegHeader* h = header_of(seg_[slot]);
  h->doorbell.fetch_add(1, std::memory_order_seq_cst);
  if (h->sleepers.load(std::memory_order_seq_cst) > 0)
    futex(&h->doorbell, FUTEX_WAKE, INT_MAX, nullptr);
}

void ShmTransport::ring_self() { ring(me_); }

void ShmTransport::sleep(uint32_t seen, Deadline until) {
  SegHeader* h = header_of(seg_[me_]);
  const auto left = until - Clock::now();
  if (left <= Clock::duration::zero()) return;
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
  const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  // A ring between our reading `seen` and the futex call changes the word, and then the
  // kernel returns at once (EAGAIN): no wakeup is lost. Ringers check `sleepers` after
  // bumping the word, we bump `sleepers` before the futex reads it (both seq_cst).
  h->sleepers.fetch_add(1, std::memory_order_seq_cst);
  futex(&h->doorbell, FUTEX_WAIT, seen, &ts);
  h->sleepers.fetch_sub(1, std::memory_order_seq_cst);
}

void ShmTransport::complete(Request& r) { r.done.store(true, std::memory_order_release); }

void ShmTransport::fail_locked(const std::string& why) {
  failed_ = true;
  if (tcp_) tcp_->fail(why);
}

RequestPtr ShmTransport::isend(int peer, const MsgKey& key, const OpSig& sig, const void* buf,
                               uint64_t n) {
  MOE_CHECK(reaches(peer) && peer != rank_, "comm.shm", "send to rank ", peer, " from rank ", rank_,
            ": not a shared-memory peer");
  auto req = std::make_shared<Request>();
  req->is_send = true;
  req->shm = true;
  req->peer = peer;
  req->size = n;
  req->tag = key.tag;
  SendOp op;
  op.req = req;
  op.hdr = make_header(key, sig, n);
  op.data = static_cast<const char*>(buf);
  if (cma_ && n >= opt_.cma_min_bytes) {
    op.hdr.flags = kFlagCmaOffer;
    op.offer.addr = reinterpret_cast<uint64_t>(buf);
    SharedRegion r;
    if (buffers_ && buffers_->find(buf, n, &r)) {
      op.offer.fd = r.fd;
      op.offer.region = r.id;
      op.offer.region_bytes = r.bytes;
      op.offer.offset = uint64_t(op.data - r.base);
    }
  }
  const int s = slot_[peer];
  std::lock_guard<std::mutex> lock(mu_);
  peer_[s].sendq.push_back(op);
  // Write at once what fits: the receiver may already be waiting.
  if (push(s)) ring(s);
  return req;
}

RequestPtr ShmTransport::irecv(int peer, const MsgKey& key, const OpSig& sig, void* buf, uint64_t n,
                               void* into_dst, const void* into_a) {
  MOE_CHECK(reaches(peer) && peer != rank_, "comm.shm", "receive from rank ", peer, " on rank ",
            rank_, ": not a shared-memory peer");
  RequestPtr req = make_receive(peer, key, sig, buf, n, /*shm=*/true);
  req->into_dst = into_dst;
  req->into_a = into_a;
  std::lock_guard<std::mutex> lock(mu_);
  // A failed transport completes no receive (a message already here may be another
  // collective's, found out by begin_op); the wait reports the failure.
  if (failed_) return req;
  Peer& P = peer_[slot_[peer]];
  std::string error;
  const auto it = post_receive(P.inbox, rank_, req, &error);
  if (it == P.inbox.end()) return req;  // waits for the message
  if (!error.empty()) {
    fail_locked(error);
    return req;
  }
  InMsg& m = it->second;
  if (m.offered) {  // single copy: the sender's bytes are waiting in its own memory
    P.readq.push_back(PendingRead{m.first, m.offer, req});
    P.inbox.erase(it);
    return req;
  }
  if (m.got == m.total) {
    if (n) std::memcpy(buf, m.stash.get(), n);
    P.inbox.erase(it);
    complete(*req);
  } else {
    m.req = req;  // the rest lands in the stash and is copied out at the end
  }
  return req;
}

void ShmTransport::begin_op(uint64_t comm_id, uint64_t seq, const OpSig& sig) {
  std::lock_guard<std::mutex> lock(mu_);
  current_[comm_id] = CurrentOp{seq, sig};
  // Records of this operation that came before it started were not checked yet.
  for (size_t s = 0; s < peer_.size(); ++s) {
    auto& inbox = peer_[s].inbox;
    for (auto it = inbox.lower_bound(MsgKey{comm_id, seq, 0});
         it != inbox.end() && it->first.comm_id == comm_id && it->first.seq == seq; ++it)
      if (it->second.first.magic == kMsgMagic) check_sig_locked(local_[s], it->second.first);
  }
}

void ShmTransport::end_op(uint64_t comm_id) {
  std::lock_guard<std::mutex> lock(mu_);
  // Kept with no operation (sequence numbers start at 1) rather than erased: one entry per
  // communicator, and no map node allocated and freed per call.
  const auto it = current_.find(comm_id);
  if (it != current_.end()) it->second.seq = 0;
}

void ShmTransport::check_sig_locked(int peer, const MsgHeader& h) {
  if (h.seq & kP2pSeqBit) return;
  auto it = current_.find(h.comm_id);
  if (it == current_.end() || it->second.seq != h.seq) return;
  if (sig_of(h) == it->second.sig) return;
  fail_locked(mismatch_message(rank_, it->second.sig, peer, sig_of(h), h.seq));
}

void ShmTransport::abandon() {
  std::lock_guard<std::mutex> lock(mu_);
  failed_ = true;
  // Peers must not complete a single-copy read of a buffer our caller is about to free.
  header_of(seg_[me_])->abandoned.store(1, std::memory_order_seq_cst);
}

bool ShmTransport::progress() {
  std::lock_guard<std::mutex> lock(mu_);
  // A failed job moves nothing more: the callers' buffers may be gone.
  if (failed_ || (tcp_ && tcp_->failed())) return false;
  bool moved = false;
  for (int s = 0; s < int(peer_.size()); ++s) {
    if (s == me_) continue;
    bool m = push(s);
    m |= pull(s);
    if (m) ring(s);  // it may wait for our data or for the room we made
    moved |= m;
  }
  // Single-copy reads last, so what we offer is out before we spend a while copying.
  for (int s = 0; s < int(peer_.size()) && !failed_; ++s) {
    Peer& P = peer_[s];
    while (!P.readq.empty() && !failed_) {
      PendingRead pr = std::move(P.readq.front());
      P.readq.pop_front();
      if (read_offer(s, pr.hdr, pr.offer, *pr.req)) complete(*pr.req);
      moved = true;
    }
  }
  return moved;
}

bool ShmTransport::push(int slot) {
  Peer& P = peer_[slot];
  if (P.sendq.empty() && P.doneq.empty()) return false;
  const Ring r = out_ring(slot);
  bool moved = false;
  uint64_t head = r.ctl->head.load(std::memory_order_acquire);
  auto room = [&] { return r.cap - (P.out_tail - head); };
  auto has_room = [&](uint64_t need) {
    if (room() >= need) return true;
    head = r.ctl->head.load(std::memory_order_acquire);  // the reader may have moved on
    return room() >= need;
  };
  auto publish = [&](uint64_t bytes) {
    P.out_tail += bytes;
    r.ctl->tail.store(P.out_tail, std::memory_order_release);
    moved = true;
  };
  while (!P.doneq.empty() && has_room(64)) {
    r.put(P.out_tail, &P.doneq.front(), sizeof(MsgHeader));
    P.doneq.pop_front();
    publish(64);
  }
  while (!P.sendq.empty()) {
    SendOp& op = P.sendq.front();
    if (op.hdr.flags & kFlagCmaOffer) {
      // The whole message in one record: the peer reads it from our memory and says "done".
      if (!has_room(128)) break;
      static_assert(sizeof(Offer) <= 64, "an offer's payload is one 64-byte unit");
      char payload[64] = {};
      std::memcpy(payload, &op.offer, sizeof op.offer);
      r.put(P.out_tail, &op.hdr, sizeof(MsgHeader));
      r.put(P.out_tail + 64, payload, sizeof payload);
      P.offered[MsgKey{op.hdr.comm_id, op.hdr.seq, op.hdr.tag}] = std::move(op.req);
      P.sendq.pop_front();
      publish(128);
      continue;
    }
    const uint64_t left = op.hdr.total - op.sent;
    if (!has_room(64 + round64(std::min<uint64_t>(left, 4096)))) break;
    // As much as fits (whole 64-byte units, at most a chunk): a ring never sits idle half
    // empty while a big message waits.
    const uint64_t len = std::min({left, opt_.chunk_bytes, (room() - 64) & ~uint64_t(63)});
    op.hdr.offset = op.sent;
    op.hdr.chunk_len = static_cast<uint32_t>(len);
    r.put(P.out_tail, &op.hdr, sizeof(MsgHeader));
    if (len) r.put(P.out_tail + 64, op.data + op.sent, len);
    op.sent += len;
    publish(64 + round64(len));
    if (op.sent == op.hdr.total) {
      complete(*op.req);
      P.sendq.pop_front();
    }
  }
  return moved;
}

bool ShmTransport::pull(int slot) {
  Peer& P = peer_[slot];
  if (P.dead) return false;
  const Ring r = in_ring(slot);
  bool moved = false;
  while (true) {
    const uint64_t tail = r.ctl->tail.load(std::memory_order_acquire);
    if (tail == P.in_head) break;
    MsgHeader h;
    r.get(P.in_head, &h, sizeof h);
    std::string bad = check_header(h, cma_ ? kFlagCmaOffer | kFlagCmaDone : 0);
    if (bad.empty() && tail - P.in_head < record_bytes(h)) bad = "record past the tail";
    if (!bad.empty()) {
      // The peer is in our job (same token, same host): a bug or corruption.
      P.dead = true;
      fail_locked("rank " + std::to_string(local_[slot]) +
                  " wrote a malformed message header into shared memory (" + bad + ")");
      break;
    }
    if (h.flags & kFlagCmaOffer) {
      Offer o;
      r.get(P.in_head + 64, &o, sizeof o);
      take_offer(slot, h, o);
    } else if (h.flags & kFlagCmaDone) {
      take_done(slot, h);
    } else {
      take_chunk(slot, h, r, P.in_head + 64);
    }
    P.in_head += record_bytes(h);
    r.ctl->head.store(P.in_head, std::memory_order_release);
    moved = true;
    if (failed_) break;
  }
  return moved;
}

std::map<MsgKey, ShmTransport::InMsg>::iterator ShmTransport::arrive(int slot, const MsgHeader& h,
                                                                     bool* inserted) {
  check_sig_locked(local_[slot], h);
  auto [it, created] = peer_[slot].inbox.try_emplace(MsgKey{h.comm_id, h.seq, h.tag});
  *inserted = created;
  return it;
}

void ShmTransport::take_chunk(int slot, const MsgHeader& h, const Ring& r, uint64_t pos) {
  const int peer = local_[slot];
  Peer& P = peer_[slot];
  bool inserted = false;
  const auto it = arrive(slot, h, &inserted);
  if (failed_) return;  // e.g. another collective's record: it must not complete a receive
  InMsg& m = it->second;
  if (inserted) m.total = h.total;
  if (m.first.magic != kMsgMagic) m.first = h;
  if (m.total != h.total) {
    const Request* q = m.req.get();
    fail_locked(size_mismatch_message(rank_, m.total, q ? &q->sig : nullptr, q ? q->seq : 0, peer,
                                      h.total, h));
    return;  // the record is dropped; the transport has failed anyway
  }
  char* dst;
  if (m.req && !m.stash) {
    dst = static_cast<char*>(m.req->buf);
  } else {
    if (!m.stash) m.stash.reset(new char[std::max<uint64_t>(m.total, 1)]);
    dst = m.stash.get();
  }
  if (h.chunk_len) r.get(pos, dst + h.offset, h.chunk_len);
  m.got += h.chunk_len;
  if (m.got < m.total || !m.req) return;
  if (m.stash && m.total) std::memcpy(m.req->buf, m.stash.get(), m.total);
  RequestPtr q = std::move(m.req);
  P.inbox.erase(it);
  complete(*q);
}

void ShmTransport::take_offer(int slot, const MsgHeader& h, const Offer& o) {
  const int peer = local_[slot];
  Peer& P = peer_[slot];
  bool inserted = false;
  const auto it = arrive(slot, h, &inserted);
  if (failed_) return;  // e.g. another collective's offer: it must not complete a receive
  InMsg& m = it->second;
  if (inserted) {  // no receive yet: irecv reads it
    m.total = h.total;
    m.first = h;
    m.offered = true;
    m.offer = o;
    return;
  }
  if (!m.req || m.offered || m.got) {
    P.dead = true;
    fail_locked("rank " + std::to_string(peer) + " sent message " + std::to_string(h.tag) + " of " +
                describe_sig(sig_of(h), h.seq) + " twice");
    return;
  }
  if (m.total != h.total) {
    fail_locked(size_mismatch_message(rank_, m.total, &m.req->sig, m.req->seq, peer, h.total, h));
    return;
  }
  P.readq.push_back(PendingRead{h, o, std::move(m.req)});
  P.inbox.erase(it);
}

bool ShmTransport::read_by_cma(int slot, const MsgHeader& h, uint64_t addr, void* dst) {
  const int peer = local_[slot];
  const SegHeader* ph = header_of(seg_[slot]);
  for (uint64_t done = 0; done < h.total;) {
    iovec local{static_cast<char*>(dst) + done, h.total - done};
    iovec remote{reinterpret_cast<void*>(addr + done), h.total - done};
    const ssize_t n = process_vm_readv(ph->pid, &local, 1, &remote, 1, 0);
    if (n <= 0) {
      const int e = n < 0 ? errno : 0;
      if (tcp_) {
        // A peer that is gone (ESRCH), or being torn down (EFAULT, nothing read, as its memory
        // goes), closed its sockets with it: the TCP transport reports that in the words every
        // transport uses ("rank N closed its connection"). Give it a moment.
        for (int i = 0; i < 400 && !tcp_->failed(); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (tcp_->failed()) {
          failed_ = true;
          return false;
        }
      }
      fail_locked("rank " + std::to_string(rank_) + " could not read " +
                  describe_sig(sig_of(h), h.seq) + " from rank " + std::to_string(peer) +
                  "'s memory: " + (e ? std::strerror(e) : "nothing read") +
                  (e == ESRCH ? " (the process is gone)" : ""));
      return false;
    }
    done += uint64_t(n);
  }
  return true;
}

bool ShmTransport::read_offer(int slot, const MsgHeader& h, const Offer& o, Request& req) {
  const int peer = local_[slot];
  const SegHeader* ph = header_of(seg_[slot]);
  if (const char* src = mapped_source(slot, h, o)) {
    if (req.into_dst) {
      reduce_into(req.into_dst, req.into_a, src, h.total / comm_dtype_size(Dtype(h.dtype)),
                  Dtype(h.dtype), ReduceOp(h.redop & 15));
      req.reduced = true;
      ++stats_.mapped_reduces;
    } else {
      copy_block(req.buf, src, h.total);
      ++stats_.mapped_reads;
    }
  } else if (failed_) {
    return false;
  } else {
    ++stats_.cma_reads;
    if (!read_by_cma(slot, h, o.addr, req.buf)) return false;
  }
  // Read before checking: if the flag was still clear, the buffer was still the caller's.
  if (ph->abandoned.load(std::memory_order_seq_cst)) {
    fail_locked("rank " + std::to_string(peer) + " gave up on " + describe_sig(sig_of(h), h.seq) +
                " while rank " + std::to_string(rank_) + " was reading its data");
    return false;
  }
  MsgHeader d = h;
  d.flags = kFlagCmaDone;
  peer_[slot].doneq.push_back(d);
  if (push(slot)) ring(slot);
  return true;
}

void ShmTransport::take_done(int slot, const MsgHeader& h) {
  Peer& P = peer_[slot];
  auto it = P.offered.find(MsgKey{h.comm_id, h.seq, h.tag});
  if (it == P.offered.end()) {
    P.dead = true;
    fail_locked("rank " + std::to_string(local_[slot]) + " reported reading message " +
                std::to_string(h.tag) + " of " + describe_sig(sig_of(h), h.seq) + " that rank " +
                std::to_string(rank_) + " never offered");
    return;
  }
  RequestPtr q = std::move(it->second);
  P.offered.erase(it);
  complete(*q);
}

const char* ShmTransport::mapped_source(int slot, const MsgHeader& h, const Offer& o) {
  Peer& P = peer_[slot];
  if (o.fd < 0 || P.no_map || pidfd_.empty() || pidfd_[slot] < 0) return nullptr;
  const int peer = local_[slot];
  if (o.offset > o.region_bytes || h.total > o.region_bytes - o.offset || o.fd > INT_MAX) {
    P.dead = true;
    fail_locked("rank " + std::to_string(peer) + " offered " + describe_sig(sig_of(h), h.seq) +
                " outside its buffer (malformed offer record)");
    return nullptr;
  }
  // A buffer the peer released since we last looked may be unmapped by it and its memory
  // reused by a later buffer: drop every mapping of that peer's then.
  const uint32_t releases = header_of(seg_[slot])->releases.load(std::memory_order_acquire);
  if (releases != P.releases_seen) {
    unmap_all(P);
    P.releases_seen = releases;
  }
  auto it = P.mapped.find(o.region);
  if (it == P.mapped.end()) {
    const int fd = pidfd_getfd(pidfd_[slot], int(o.fd));
    if (fd < 0) {
      // Refused (ptrace policy, an old kernel): single copy by process_vm_readv instead.
      MOE_COMM_WARN("rank ", rank_, ": cannot map rank ", peer,
                    "'s buffers (pidfd_getfd: ", std::strerror(errno),
                    "); reading them by process_vm_readv instead");
      P.no_map = true;
      return nullptr;
    }
    struct stat st {};
    void* p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && uint64_t(st.st_size) >= o.region_bytes)
      p = mmap(nullptr, o.region_bytes, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      P.dead = true;
      fail_locked("rank " + std::to_string(rank_) + " could not map rank " + std::to_string(peer) +
                  "'s buffer of " + std::to_string(o.region_bytes) + " bytes for " +
                  describe_sig(sig_of(h), h.seq));
      return nullptr;
    }
    if (P.mapped.size() >= kMaxMappedPerPeer) {
      munmap(P.mapped.begin()->second.base, P.mapped.begin()->second.bytes);
      P.mapped.erase(P.mapped.begin());
    }
    it = P.mapped.emplace(o.region, Mapping{static_cast<char*>(p), o.region_bytes}).first;
    ++stats_.maps;
  } else if (it->second.bytes != o.region_bytes) {
    P.dead = true;
    fail_locked("rank " + std::to_string(peer) + " offered " + describe_sig(sig_of(h), h.seq) +
                " from buffer " + std::to_string(o.region) + " with another length than before");
    return nullptr;
  }
  return it->second.base + o.offset;
}

void ShmTransport::unmap_all(Peer& P) {
  for (auto& [id, m] : P.mapped) munmap(m.base, m.bytes);
  P.mapped.clear();
}

void ShmTransport::note_release() {
  header_of(seg_[me_])->releases.fetch_add(1, std::memory_order_release);
}

ShmStats ShmTransport::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace moe::comm
