#include "comm/transport/message.h"

namespace moe::comm {

std::string describe_sig(const OpSig& s, uint64_t seq) {
  std::string out = op_kind_name(s.kind);
  if (seq & kP2pSeqBit) out += " #" + std::to_string(seq & ~kP2pSeqBit) + " (point-to-point)";
  else out += " #" + std::to_string(seq);
  if (s.kind == OpKind::kSendRecv || s.kind == OpKind::kBarrier || s.kind == OpKind::kSplit)
    return out;
  out += " (" + std::to_string(s.count) + " x " +
         comm_dtype_name(static_cast<Dtype>(s.dtype));
  if (s.kind == OpKind::kAllReduce || s.kind == OpKind::kReduceScatter)
    out += std::string(", ") + reduce_op_name(static_cast<ReduceOp>(s.redop));
  if (s.kind == OpKind::kBroadcast) out += ", root " + std::to_string(s.root);
  return out + ")";
}

std::string check_header(const MsgHeader& h) {
  if (h.magic != kMsgMagic) return "bad magic";
  if (h.kind == 0 || h.kind >= static_cast<uint8_t>(OpKind::kCount))
    return "unknown kind " + std::to_string(h.kind);
  if (h.total > kMaxMessageBytes) return "message of " + std::to_string(h.total) + " bytes";
  if (h.offset > h.total || h.chunk_len > h.total - h.offset)
    return "chunk [" + std::to_string(h.offset) + ", +" + std::to_string(h.chunk_len) +
           ") outside a message of " + std::to_string(h.total) + " bytes";
  if (h.redop > 3) return "unknown reduction " + std::to_string(h.redop);
  return "";
}

}  // namespace moe::comm
