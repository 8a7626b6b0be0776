// Byte tokenizer: token = byte value (vocab 256).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

inline std::vector<int32_t> byte_encode(const std::string& text) {
  std::vector<int32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

inline std::string byte_decode(const std::vector<int32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) out.push_back(static_cast<char>(t & 0xff));
  return out;
}

}  // namespace moe
