// What travels between ranks: a 64-byte header in front of every chunk of every message.
// The header names the communicator, the collective's kind and sequence number, the algorithm's
// tag for this message, and the collective's signature (dtype, reduction, count, root), so a
// rank that called a different collective, or the same one with another size, is reported by
// name instead of hanging.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "comm/common.h"

namespace moe::comm {

constexpr uint32_t kMsgMagic = 0x314d454d;  // "MEM1"
// Point-to-point messages use their own sequence space (per pair of ranks).
constexpr uint64_t kP2pSeqBit = 1ull << 63;
constexpr uint64_t kMaxMessageBytes = 1ull << 40;
// MsgHeader::flags, shared-memory transport only (single copy, transport/shm.h): the record
// offers the whole message for the receiver to read from the sender's memory (a 64-byte payload
// holds the address), or reports that the receiver has read it.
constexpr uint32_t kFlagCmaOffer = 1;
constexpr uint32_t kFlagCmaDone = 2;

// The signature of one call of a collective: equal on every rank for a correct program.
struct OpSig {
  OpKind kind = OpKind::kNone;
  uint8_t dtype = 0;
  uint8_t redop = 0;
  uint8_t algo = 0;
  int32_t root = -1;
  uint64_t count = 0;  // elements as called; 0 where ranks legitimately differ (all_to_allv)
  uint8_t wire = 0;    // Wire (compression.h): f32 values travel encoded; messages are bytes
  bool operator==(const OpSig&) const = default;
};
std::string describe_sig(const OpSig& s, uint64_t seq);  // "all_reduce #5 (1024 x float, sum)"

// What errors call the operation a wait belongs to: "all_reduce #5 (1024 x float, sum) on rank
// 1 of 4", "send #3 of 16 x float from rank 0 to rank 2". Kept as fields and put into words
// only when an error needs them: built for every call, the string cost 3-4% of a 4 KiB
// all_reduce.
struct OpLabel {
  enum class Kind : uint8_t { kCollective, kSend, kRecv };
  Kind kind = Kind::kCollective;
  OpSig sig;
  uint64_t seq = 0;      // the collective's sequence number; send/recv: its number to `peer`
  int rank = 0;          // in the communicator
  int size = 1;          // of the communicator
  int global_rank = -1;  // >= 0: named too (a sub-communicator's rank differs from it)
  int peer = -1;         // send/recv: the other rank
  std::string str() const;
};

struct MsgHeader {
  uint32_t magic;
  uint8_t kind;   // OpKind
  uint8_t dtype;  // OpSig
  uint8_t redop;  // ReduceOp in the low 4 bits, the OpSig's wire format in the high 4
  uint8_t algo;
  uint32_t tag;  // which message of the algorithm (step, piece)
  int32_t root;
  uint64_t comm_id;  // which communicator (world or a split)
  uint64_t seq;      // collective sequence number on that communicator
  uint64_t op_count;
  uint64_t total;      // bytes of the whole message
  uint64_t offset;     // where this chunk starts in it
  uint32_t chunk_len;  // bytes of payload after this header
  uint32_t flags;      // kFlagCma*; 0 over TCP
};
static_assert(sizeof(MsgHeader) == 64);

inline OpSig sig_of(const MsgHeader& h) {
  OpSig s;
  s.kind = static_cast<OpKind>(h.kind);
  s.dtype = h.dtype;
  s.redop = h.redop & 15;
  s.wire = h.redop >> 4;
  s.algo = h.algo;
  s.root = h.root;
  s.count = h.op_count;
  return s;
}

// One posted send or receive; `done` flips once, under the transport's lock.
struct Request {
  std::atomic<bool> done{false};
  int peer = -1;
  bool is_send = false;
  // receive side
  void* buf = nullptr;
  uint64_t size = 0;
  OpSig sig;
  uint64_t comm_id = 0, seq = 0;
  uint32_t tag = 0;
  int chunks_left = 0;  // send side
  bool shm = false;     // carried by the shared-memory transport (else TCP)
  // A receive whose bytes are only an operand (OpContext::recv_reduce): where the transport
  // can read the sender's buffer in place it computes into_dst = into_a op message itself,
  // leaves `buf` alone and sets `reduced`. Otherwise the bytes land in `buf` as usual.
  void* into_dst = nullptr;
  const void* into_a = nullptr;
  bool reduced = false;
};
using RequestPtr = std::shared_ptr<Request>;

struct MsgKey {
  uint64_t comm_id, seq;
  uint32_t tag;
  bool operator<(const MsgKey& o) const {
    return std::tie(comm_id, seq, tag) < std::tie(o.comm_id, o.seq, o.tag);
  }
};

// The header of a message of `n` bytes: which message (key) of which collective (sig); offset,
// chunk_len and flags are the transport's to fill in.
inline MsgHeader make_header(const MsgKey& key, const OpSig& sig, uint64_t n) {
  MsgHeader h{};
  h.magic = kMsgMagic;
  h.kind = static_cast<uint8_t>(sig.kind);
  h.dtype = sig.dtype;
  h.redop = uint8_t(sig.redop | sig.wire << 4);
  h.algo = sig.algo;
  h.root = sig.root;
  h.op_count = sig.count;
  h.tag = key.tag;
  h.comm_id = key.comm_id;
  h.seq = key.seq;
  h.total = n;
  return h;
}

// A receive of `n` bytes into `buf` from `peer`, as both transports' irecv start it.
inline RequestPtr make_receive(int peer, const MsgKey& key, const OpSig& sig, void* buf,
                               uint64_t n, bool shm) {
  auto req = std::make_shared<Request>();
  req->shm = shm;
  req->peer = peer;
  req->buf = buf;
  req->size = n;
  req->sig = sig;
  req->comm_id = key.comm_id;
  req->seq = key.seq;
  req->tag = key.tag;
  return req;
}

// "" if the header is well formed, else why not (fuzzed by tests/comm). `allowed_flags`: the
// flags this transport understands (the others must be 0).
std::string check_header(const MsgHeader& h, uint32_t allowed_flags = 0);

// The errors every transport reports in the same words (tests look for them).
// Another collective (or the same with other arguments) at the same sequence number:
std::string mismatch_message(int rank, const OpSig& mine, int peer, const OpSig& theirs,
                             uint64_t seq);
// A message of another size than the posted receive:
std::string size_mismatch_message(int rank, uint64_t want, const OpSig* mine, uint64_t my_seq,
                                  int peer, uint64_t got, const MsgHeader& theirs);
// The deadline passed while `r` was pending:
std::string timeout_message(const OpLabel& what, const Request& r);
// A receive from a rank that already closed its communicator:
std::string peer_gone_message(const OpLabel& what, int peer);

// Posts `req` in a transport's inbox (a map from MsgKey to its InMsg, which has req, total and
// first). If nothing of the message has come yet, the receive waits there for it: returns
// end(). Else returns the message's entry; if that message has another size or already has a
// receive, `*error` says so and the receive is not attached.
template <class InMsg>
typename std::map<MsgKey, InMsg>::iterator post_receive(std::map<MsgKey, InMsg>& inbox,
                                                        int rank, const RequestPtr& req,
                                                        std::string* error) {
  const MsgKey key{req->comm_id, req->seq, req->tag};
  auto it = inbox.find(key);
  if (it == inbox.end()) {
    InMsg& m = inbox[key];
    m.req = req;
    m.total = req->size;
    return inbox.end();
  }
  const InMsg& m = it->second;
  if (m.total != req->size || m.req)
    *error = size_mismatch_message(rank, req->size, &req->sig, req->seq, req->peer, m.total,
                                   m.first);
  return it;
}

}  // namespace moe::comm
