// Byte-level BPE (GPT-2 style), trained here and saved/loaded as a Hugging Face
// tokenizer.json, so GPT-2-style files from elsewhere load too.
//
// Text is first cut into pre-tokens by the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// then each pre-token's bytes are merged by rank. Every byte has a token, so any byte
// sequence (valid UTF-8 or not) encodes and decodes back exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moe {

// Cuts text into GPT-2 pre-tokens (byte ranges that concatenate back to the text). Invalid
// UTF-8 bytes count as single "other" characters.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

struct BpeTrainOptions {
  int vocab_size = 4096;  // total, including the 256 byte tokens and the special tokens
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // Called every few hundred merges with (merges done, merges wanted).
  std::function<void(int, int)> progress;
};

class BpeTokenizer {
 public:
  // Learns merges from texts: repeatedly the most frequent adjacent pair inside pre-tokens
  // (ties: the pair whose merged bytes sort first).
  static BpeTokenizer train(const std::vector<std::string>& texts, const BpeTrainOptions& opt);
  // Reads a tokenizer.json; throws naming the file and key for anything it cannot honour
  // (another model type, a non-byte-level pre-tokenizer, a token outside the byte alphabet).
  static BpeTokenizer load(const std::string& path);
  void save(const std::string& path) const;  // atomically, HF tokenizer.json layout

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;  // throws on an unknown id

  int vocab_size() const { return int(tokens_.size()); }
  const std::string& token_bytes(int32_t id) const { return tokens_[size_t(id)]; }
  bool is_special(int32_t id) const { return special_[size_t(id)]; }  // an added token
  bool operator==(const BpeTokenizer& o) const;

 private:
  void build_index();
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;                 // id -> raw bytes
  std::vector<std::pair<int32_t, int32_t>> merges_;  // rank -> (left id, right id)
  std::vector<bool> special_;                       // id -> is an added special token
  bool add_prefix_space_ = false;
  // Derived: (left, right) -> (rank, merged id); bytes -> id for specials.
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> rank_;  // key: left << 32 | right
  std::vector<std::pair<std::string, int32_t>> specials_;
};

}  // namespace moe
