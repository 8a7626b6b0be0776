// libFuzzer harness for what a rank parses off the wire: message headers (comm/transport)
// and store requests (comm/store). Built with clang -fsanitize=fuzzer,address,undefined by
// tests/comm/CMakeLists.txt and run for a bounded time as a ctest. The checks must reject
// anything malformed without crashing, and accepted headers must describe a chunk that
// lies inside its message (the transport writes the chunk at buf + offset).
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "comm/store.h"
#include "comm/transport/message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moe::comm;
  MsgHeader h;
  if (size >= sizeof h) {
    std::memcpy(&h, data, sizeof h);
    if (check_header(h).empty()) {
      if (h.offset + h.chunk_len > h.total || h.total > kMaxMessageBytes) std::abort();
      describe_sig(sig_of(h), h.seq);  // error messages format any accepted header
    }
    // The shared-memory transport also accepts the single-copy flags, never with a payload.
    if (check_header(h, kFlagCmaOffer | kFlagCmaDone).empty()) {
      if (h.offset + h.chunk_len > h.total || h.total > kMaxMessageBytes) std::abort();
      if (h.flags && (h.chunk_len || h.offset || h.flags > kFlagCmaDone)) std::abort();
    }
  }
  StoreRequestHeader s;
  if (size >= sizeof s) {
    std::memcpy(&s, data + (size - sizeof s), sizeof s);
    if (check_store_request(s).empty()) {
      if (s.key_len == 0 || s.key_len > kStoreMaxKey || s.value_len > kStoreMaxValue)
        std::abort();
    }
  }
  return 0;
}
