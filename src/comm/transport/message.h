// What travels between ranks: a 64-byte header in front of every chunk of every message.
// The header names the communicator, the collective's kind and sequence number, the algorithm's
// tag for this message, and the collective's signature (dtype, reduction, count, root), so a
// rank that called a different collective, or the same one with another size, is reported by
// name instead of hanging.
#pragma once

#include <cstdint>
#include <string>

#include "comm/common.h"

namespace moe::comm {

constexpr uint32_t kMsgMagic = 0x314d454d;  // "MEM1"
// Point-to-point messages use their own sequence space (per pair of ranks).
constexpr uint64_t kP2pSeqBit = 1ull << 63;
constexpr uint64_t kMaxMessageBytes = 1ull << 40;

// The signature of one call of a collective: equal on every rank for a correct program.
struct OpSig {
  OpKind kind = OpKind::kNone;
  uint8_t dtype = 0;
  uint8_t redop = 0;
  uint8_t algo = 0;
  int32_t root = -1;
  uint64_t count = 0;  // elements as called; 0 where ranks legitimately differ (all_to_allv)
  bool operator==(const OpSig&) const = default;
};
std::string describe_sig(const OpSig& s, uint64_t seq);  // "all_reduce #5 (1024 x float, sum)"

struct MsgHeader {
  uint32_t magic;
  uint8_t kind;       // OpKind
  uint8_t dtype;      // OpSig
  uint8_t redop;
  uint8_t algo;
  uint32_t tag;       // which message of the algorithm (step, piece)
  int32_t root;
  uint64_t comm_id;   // which communicator (world or a split)
  uint64_t seq;       // collective sequence number on that communicator
  uint64_t op_count;
  uint64_t total;     // bytes of the whole message
  uint64_t offset;    // where this chunk starts in it
  uint32_t chunk_len; // bytes of payload after this header
  uint32_t reserved;
};
static_assert(sizeof(MsgHeader) == 64);

inline OpSig sig_of(const MsgHeader& h) {
  OpSig s;
  s.kind = static_cast<OpKind>(h.kind);
  s.dtype = h.dtype;
  s.redop = h.redop;
  s.algo = h.algo;
  s.root = h.root;
  s.count = h.op_count;
  return s;
}

// "" if the header is well formed, else why not (fuzzed by tests/comm).
std::string check_header(const MsgHeader& h);

}  // namespace moe::comm
