// The tokenizer every tool sees: byte-level (vocab 256) or byte-level BPE from a Hugging Face
// tokenizer.json, chosen by a spec string that is stored in shard manifests and checkpoints so
// that `moe eval` and `moe generate` can rebuild the same tokenizer.
//
//   spec "byte"                       token = byte value, no eos
//   spec "path/to/tokenizer.json"     BpeTokenizer::load; eos = its <|endoftext|> (or </s>, ...)
//   spec "path/to/dir"                dir/tokenizer.json
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Throws moe::Error on an id outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  // "byte", or the absolute path of the tokenizer.json; make_tokenizer(spec()) rebuilds it.
  virtual const std::string& spec() const = 0;
  // For messages: "byte" or "bpe (vocab 4096, tokenizer.json)".
  virtual std::string name() const = 0;
  // The end-of-text token that separates documents, or -1 if the tokenizer has none.
  virtual int32_t eos_id() const = 0;
  // True when encoding a text in pieces cut right after a '\n' that is followed by a
  // non-whitespace byte gives the same ids as encoding it whole (such a cut is always a GPT-2
  // pre-token boundary), so long files can be streamed. False for BPE with add_prefix_space.
  virtual bool chunkable() const = 0;
};

// Builds the tokenizer a spec names (see the top of this file). Throws moe::Error naming the
// spec and how to fix it for a missing file, a directory without tokenizer.json, or a file
// BpeTokenizer cannot read.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec);

// The tokenizer a model folder (config.json + model.safetensors) was trained with:
// dir/tokenizer.json when it exists, else "byte". Pass it to make_tokenizer().
std::string model_tokenizer_spec(const std::string& model_dir);

// The largest n <= text.size() such that text[0, n) ends right after a '\n' followed by a
// non-whitespace byte (a safe place to cut for chunkable() tokenizers); 0 if there is none.
size_t last_safe_cut(std::string_view text);

}  // namespace moe
