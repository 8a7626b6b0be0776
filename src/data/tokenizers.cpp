#include "data/tokenizers.h"

#include <filesystem>

#include "core/error.h"
#include "data/bpe.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out(text.size());
    for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
    return out;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      MOE_CHECK(ids[i] >= 0 && ids[i] < 256, "tokenizer", "token id ", ids[i],
                " is outside the byte vocab [0, 256); was the data made with another tokenizer?");
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }
  int vocab_size() const override { return 256; }
  const std::string& spec() const override { return spec_; }
  std::string name() const override { return "byte"; }
  int32_t eos_id() const override { return -1; }
  bool chunkable() const override { return true; }

 private:
  std::string spec_ = "byte";
};

class BpeWrapper final : public Tokenizer {
 public:
  BpeWrapper(BpeTokenizer bpe, std::string path) : bpe_(std::move(bpe)), spec_(std::move(path)) {
    // The first special token with a conventional end-of-text name separates documents.
    for (const char* want : {"<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>"}) {
      for (int32_t id = 0; id < bpe_.vocab_size() && eos_ < 0; ++id)
        if (bpe_.is_special(id) && bpe_.token_bytes(id) == want) eos_ = id;
    }
    // add_prefix_space is private to BpeTokenizer; it shows as "x" and " x" encoding alike.
    chunkable_ = bpe_.encode("x") != bpe_.encode(" x");
  }
  std::vector<int32_t> encode(std::string_view text) const override { return bpe_.encode(text); }
  std::string decode(const std::vector<int32_t>& ids) const override { return bpe_.decode(ids); }
  int vocab_size() const override { return bpe_.vocab_size(); }
  const std::string& spec() const override { return spec_; }
  std::string name() const override {
    return "bpe (vocab " + std::to_string(bpe_.vocab_size()) + ", " + spec_ + ")";
  }
  int32_t eos_id() const override { return eos_; }
  bool chunkable() const override { return chunkable_; }

 private:
  BpeTokenizer bpe_;
  std::string spec_;
  int32_t eos_ = -1;
  bool chunkable_ = true;
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec) {
  MOE_CHECK(!spec.empty(), "tokenizer",
            "empty tokenizer spec; use \"byte\" or the path of a tokenizer.json");
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  fs::path p(spec);
  std::error_code ec;
  MOE_CHECK(fs::exists(p, ec), "tokenizer", "'", spec,
            "' is neither \"byte\" nor an existing file or directory; give \"byte\", a "
            "tokenizer.json, or a folder holding one (make one with `moe tokenizer train`)");
  if (fs::is_directory(p, ec)) {
    MOE_CHECK(fs::is_regular_file(p / "tokenizer.json", ec), "tokenizer", "directory '", spec,
              "' has no tokenizer.json; point --tokenizer at the file itself or at a folder "
              "that holds one");
    p /= "tokenizer.json";
  }
  const std::string abs = fs::absolute(p, ec).lexically_normal().string();
  return std::make_unique<BpeWrapper>(BpeTokenizer::load(abs), abs);
}

std::string model_tokenizer_spec(const std::string& model_dir) {
  const fs::path p = fs::path(model_dir) / "tokenizer.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return "byte";
  return fs::absolute(p, ec).lexically_normal().string();
}

size_t last_safe_cut(std::string_view text) {
  // text[n - 1] == '\n' and text[n] is ASCII non-whitespace; non-ASCII might be a Unicode space
  // that the pre-tokenizer would join to the newline, so it never follows a cut.
  for (size_t n = text.size(); n-- > 1;) {
    if (text[n - 1] != '\n') continue;
    const auto c = static_cast<unsigned char>(text[n]);
    if (c < 0x80 && c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f')
      return n;
  }
  return 0;
}

}  // namespace moe
