#include "comm/transport/message.h"

#include "comm/compression.h"

namespace moe::comm {

std::string describe_sig(const OpSig& s, uint64_t seq) {
  std::string out = op_kind_name(s.kind);
  if (seq & kP2pSeqBit)
    out += " #" + std::to_string(seq & ~kP2pSeqBit) + " (point-to-point)";
  else
    out += " #" + std::to_string(seq);
  if (s.kind == OpKind::kSendRecv || s.kind == OpKind::kBarrier || s.kind == OpKind::kSplit)
    return out;
  out += " (" + std::to_string(s.count) + " x " + comm_dtype_name(static_cast<Dtype>(s.dtype));
  if (s.kind == OpKind::kAllReduce || s.kind == OpKind::kReduceScatter)
    out += std::string(", ") + reduce_op_name(static_cast<ReduceOp>(s.redop));
  if (s.kind == OpKind::kBroadcast) out += ", root " + std::to_string(s.root);
  if (s.wire) out += std::string(", ") + wire_name(Wire(s.wire)) + " on the wire";
  return out + ")";
}

std::string OpLabel::str() const {
  const std::string type =
      std::to_string(sig.count) + " x " + comm_dtype_name(static_cast<Dtype>(sig.dtype));
  if (kind == Kind::kSend)
    return "send #" + std::to_string(seq) + " of " + type + " from rank " + std::to_string(rank) +
           " to rank " + std::to_string(peer);
  if (kind == Kind::kRecv)
    return "recv #" + std::to_string(seq) + " of " + type + " on rank " + std::to_string(rank) +
           " from rank " + std::to_string(peer);
  std::string s =
      describe_sig(sig, seq) + " on rank " + std::to_string(rank) + " of " + std::to_string(size);
  if (global_rank >= 0) s += " (global rank " + std::to_string(global_rank) + ")";
  return s;
}

std::string check_header(const MsgHeader& h, uint32_t allowed_flags) {
  if (h.magic != kMsgMagic) return "bad magic";
  if (h.kind == 0 || h.kind >= static_cast<uint8_t>(OpKind::kCount))
    return "unknown kind " + std::to_string(h.kind);
  if (h.total > kMaxMessageBytes) return "message of " + std::to_string(h.total) + " bytes";
  if (h.offset > h.total || h.chunk_len > h.total - h.offset)
    return "chunk [" + std::to_string(h.offset) + ", +" + std::to_string(h.chunk_len) +
           ") outside a message of " + std::to_string(h.total) + " bytes";
  if ((h.redop & 15) > 3) return "unknown reduction " + std::to_string(h.redop & 15);
  if ((h.redop >> 4) > 3) return "unknown wire format " + std::to_string(h.redop >> 4);
  if (h.flags & ~allowed_flags) return "unknown flags " + std::to_string(h.flags);
  if (h.flags == (kFlagCmaOffer | kFlagCmaDone)) return "offer and done flags together";
  if (h.flags && (h.chunk_len || h.offset)) return "a single-copy record with a payload";
  return "";
}

}  // namespace moe::comm

namespace moe::comm {

std::string mismatch_message(int rank, const OpSig& mine, int peer, const OpSig& theirs,
                             uint64_t seq) {
  std::string extra;
  if (theirs.kind == mine.kind && theirs.count == mine.count && theirs.algo != mine.algo)
    extra =
        " (different algorithms: set MOE_COMM_ALGO and MOE_COMM_ALGO_A2A the same on every "
        "rank)";
  return "mismatched collectives: rank " + std::to_string(rank) + " called " +
         describe_sig(mine, seq) + " but rank " + std::to_string(peer) + " called " +
         describe_sig(theirs, seq) + extra +
         "; every rank must call the same collectives in the same order with the same sizes";
}

std::string size_mismatch_message(int rank, uint64_t want, const OpSig* mine, uint64_t my_seq,
                                  int peer, uint64_t got, const MsgHeader& theirs) {
  return "rank " + std::to_string(rank) + " expects " + std::to_string(want) + " bytes from rank " +
         std::to_string(peer) + " in " +
         (mine ? describe_sig(*mine, my_seq) : std::string("a message")) + " (tag " +
         std::to_string(theirs.tag) + "), but rank " + std::to_string(peer) + " sent " +
         std::to_string(got) + " bytes in " + describe_sig(sig_of(theirs), theirs.seq) +
         ": every rank must call the same collectives with matching sizes";
}

std::string timeout_message(const OpLabel& what, const Request& r) {
  return what.str() + ": timed out waiting for rank " + std::to_string(r.peer) + " to " +
         (r.is_send ? "take" : "send") + " a message (tag " + std::to_string(r.tag) +
         "): that rank is stalled or called a different collective; MOE_COMM_TIMEOUT sets the "
         "limit in seconds (default 300)";
}

std::string peer_gone_message(const OpLabel& what, int peer) {
  return what.str() + ": rank " + std::to_string(peer) +
         " has already shut down its communicator: it finished or failed before this "
         "operation; every rank must call the same collectives";
}

}  // namespace moe::comm
