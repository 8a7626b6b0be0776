#include "data/bpe.h"

#include <locale.h>
#include <wctype.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/safetensors.h"

namespace moe {

namespace {

// ---- Characters -------------------------------------------------------------------------

enum class CharClass { kLetter, kNumber, kSpace, kOther };

// Unicode classes from glibc's C.UTF-8 locale (letters, digits, spaces), without touching the
// process's global locale; ASCII rules if that locale is missing.
locale_t utf8_locale() {
  static const locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t(0));
  return loc;
}

CharClass classify(uint32_t cp) {
  if (cp < 128) {
    if ((cp | 32) >= 'a' && (cp | 32) <= 'z') return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 9 && cp <= 13)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  const locale_t loc = utf8_locale();
  if (cp == 0xFFFFFFFFu || loc == locale_t(0)) return CharClass::kOther;  // invalid byte
  const auto w = wint_t(cp);
  if (iswspace_l(w, loc)) return CharClass::kSpace;
  if (iswdigit_l(w, loc)) return CharClass::kNumber;
  if (iswalpha_l(w, loc)) return CharClass::kLetter;
  return CharClass::kOther;
}

// Length of the UTF-8 character at s[i] and its code point; an invalid sequence is one byte
// with code point 0xFFFFFFFF.
size_t next_char(std::string_view s, size_t i, uint32_t* cp) {
  const auto b = uint8_t(s[i]);
  size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return *cp = 0xFFFFFFFFu, 1;
  uint32_t c = n == 1 ? b : b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto t = uint8_t(s[i + k]);
    if ((t >> 6) != 2) return *cp = 0xFFFFFFFFu, 1;
    c = c << 6 | (t & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kMin[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return *cp = 0xFFFFFFFFu, 1;
  *cp = c;
  return n;
}

// GPT-2's byte <-> printable character map: printable Latin-1 bytes stand for themselves,
// the other 68 bytes take code points 256, 257, ... in byte order.
struct ByteAlphabet {
  uint32_t to_cp[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteAlphabet() {
    uint32_t extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_cp[b] = printable ? b : extra++;
      to_byte[to_cp[b]] = uint8_t(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6), out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xE0 | cp >> 12), out += char(0x80 | (cp >> 6 & 0x3F)), out += char(0x80 | (cp & 0x3F));
  }
}

std::string bytes_to_symbols(std::string_view bytes) {  // raw bytes -> tokenizer.json spelling
  std::string s;
  for (char c : bytes) append_utf8(s, alphabet().to_cp[uint8_t(c)]);
  return s;
}

// tokenizer.json spelling -> raw bytes; false if a character is outside the byte alphabet.
bool symbols_to_bytes(std::string_view sym, std::string* out) {
  out->clear();
  for (size_t i = 0; i < sym.size();) {
    uint32_t cp;
    i += next_char(sym, i, &cp);
    const auto it = alphabet().to_byte.find(cp);
    if (it == alphabet().to_byte.end()) return false;
    *out += char(it->second);
  }
  return true;
}

uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

}  // namespace

// ---- Pre-tokenizer ----------------------------------------------------------------------

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  // Decode once: start offset and class of every character.
  std::vector<size_t> pos;
  std::vector<CharClass> cls;
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    const size_t n = next_char(text, i, &cp);
    pos.push_back(i), cls.push_back(classify(cp));
    i += n;
  }
  const size_t n = cls.size();
  pos.push_back(text.size());
  auto run = [&](size_t i, auto pred) {  // end of the run of characters satisfying pred
    while (i < n && pred(cls[i])) ++i;
    return i;
  };
  auto is = [](CharClass c) { return [c](CharClass x) { return x == c; }; };
  auto is_other = [](CharClass x) { return x == CharClass::kOther; };

  std::vector<std::string_view> out;
  for (size_t i = 0; i < n;) {
    size_t end = i;
    // 's 't 're 've 'm 'll 'd
    if (text[pos[i]] == '\'') {
      for (const char* suf : {"s", "t", "re", "ve", "m", "ll", "d"}) {
        const size_t len = std::char_traits<char>::length(suf);
        if (text.substr(pos[i] + 1, len) == suf) {
          end = i + 1 + len;
          break;
        }
      }
    }
    if (end == i) {
      const size_t j = text[pos[i]] == ' ' && i + 1 < n ? i + 1 : i;  // optional leading space
      if (cls[j] == CharClass::kLetter) {
        end = run(j, is(CharClass::kLetter));
      } else if (cls[j] == CharClass::kNumber) {
        end = run(j, is(CharClass::kNumber));
      } else if (cls[j] == CharClass::kOther) {
        end = run(j, is_other);
      } else {  // whitespace: \s+(?!\S) leaves the last one to the word after it; else \s+
        end = run(i, is(CharClass::kSpace));
        if (end < n && end - i > 1) --end;
      }
    }
    out.push_back(text.substr(pos[i], pos[end] - pos[i]));
    i = end;
  }
  return out;
}

// ---- Training ---------------------------------------------------------------------------

BpeTokenizer BpeTokenizer::train(const std::vector<std::string>& texts,
                                 const BpeTrainOptions& opt) {
  const int n_special = int(opt.special_tokens.size());
  MOE_CHECK(opt.vocab_size >= 256 + n_special, "bpe", "vocab_size = ", opt.vocab_size,
            " is below 256 byte tokens + ", n_special, " special tokens; choose at least ",
            256 + n_special);
  BpeTokenizer t;
  for (int b = 0; b < 256; ++b) t.tokens_.push_back(std::string(1, char(b)));

  // Distinct pre-tokens with their counts, as symbol sequences.
  std::unordered_map<std::string_view, int64_t> counts;
  for (const auto& text : texts)
    for (std::string_view w : gpt2_pretokenize(text)) ++counts[w];
  std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());  // deterministic order
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> freq;
  for (const auto& [w, c] : sorted) {
    if (w.size() < 2) continue;  // nothing to merge inside one byte
    words.emplace_back();
    for (char ch : w) words.back().push_back(uint8_t(ch));
    freq.push_back(c);
  }

  // Pair counts and, per pair, the words it occurs in (may list stale words; rechecked).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    for (size_t k = 0; k + 1 < words[w].size(); ++k) {
      const uint64_t key = pair_key(words[w][k], words[w][k + 1]);
      pair_count[key] += freq[w];
      auto& list = where[key];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }

  const int wanted = opt.vocab_size - 256 - n_special;
  for (int m = 0; m < wanted; ++m) {
    uint64_t best = 0;
    int64_t best_count = 0;
    std::string best_bytes;
    for (const auto& [key, c] : pair_count) {
      if (c < best_count || c <= 0) continue;
      const std::string bytes = t.tokens_[key >> 32] + t.tokens_[key & 0xFFFFFFFFu];
      if (c > best_count || bytes < best_bytes) best = key, best_count = c, best_bytes = bytes;
    }
    if (best_count < 2) break;  // nothing left worth merging
    const auto a = int32_t(best >> 32), b = int32_t(best & 0xFFFFFFFFu);
    const auto id = int32_t(t.tokens_.size());
    t.tokens_.push_back(best_bytes);
    t.merges_.push_back({a, b});

    std::vector<int32_t> list;
    list.swap(where[best]);
    for (int32_t w : list) {
      auto& s = words[size_t(w)];
      const int64_t f = freq[size_t(w)];
      auto add = [&](int32_t x, int32_t y, int64_t d) {
        const uint64_t key = pair_key(x, y);
        pair_count[key] += d;
        if (d > 0) where[key].push_back(w);
      };
      std::vector<int32_t> merged;
      merged.reserve(s.size());
      for (size_t k = 0; k < s.size(); ++k) {
        if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
          // Remove the pairs around the merged one, add the new ones.
          if (!merged.empty()) add(merged.back(), a, -f), add(merged.back(), id, f);
          if (k + 2 < s.size()) add(b, s[k + 2], -f), add(id, s[k + 2], f);
          merged.push_back(id);
          ++k;
        } else {
          merged.push_back(s[k]);
        }
      }
      // Runs like "a b a b" remove and re-add the (b, a) and (id, a) pairs consistently.
      if (merged.size() != s.size()) pair_count[best] -= f * int64_t(s.size() - merged.size());
      s.swap(merged);
    }
    pair_count.erase(best);
    if (opt.progress && (m % 256 == 255 || m + 1 == wanted)) opt.progress(m + 1, wanted);
  }
  for (const auto& sp : opt.special_tokens) t.tokens_.push_back(sp);
  t.special_.assign(t.tokens_.size(), false);
  for (int k = 0; k < n_special; ++k) t.special_[t.tokens_.size() - 1 - size_t(k)] = true;
  t.build_index();
  return t;
}

void BpeTokenizer::build_index() {
  rank_.clear();
  specials_.clear();
  std::unordered_map<std::string, int32_t> id_of;
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (!special_[i]) id_of.emplace(tokens_[i], int32_t(i));
  for (size_t r = 0; r < merges_.size(); ++r) {
    const auto [a, b] = merges_[r];
    const auto it = id_of.find(tokens_[size_t(a)] + tokens_[size_t(b)]);
    MOE_CHECK(it != id_of.end(), "bpe", "merge ", r, " makes a token that is not in the vocab");
    rank_.emplace(pair_key(a, b), std::pair<int32_t, int32_t>(int32_t(r), it->second));
  }
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (special_[i]) specials_.push_back({tokens_[i], int32_t(i)});
  // Longest first, so a special token that contains another wins.
  std::sort(specials_.begin(), specials_.end(),
            [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
}

// ---- Encoding ---------------------------------------------------------------------------

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<int32_t> s(word.size());
  for (size_t k = 0; k < word.size(); ++k) s[k] = uint8_t(word[k]);
  // Merge the lowest-ranked adjacent pair everywhere it occurs, until none is left.
  while (s.size() > 1) {
    int32_t best_rank = INT32_MAX, a = 0, b = 0, id = 0;
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      const auto it = rank_.find(pair_key(s[k], s[k + 1]));
      if (it != rank_.end() && it->second.first < best_rank)
        best_rank = it->second.first, a = s[k], b = s[k + 1], id = it->second.second;
    }
    if (best_rank == INT32_MAX) break;
    size_t w = 0;
    for (size_t k = 0; k < s.size(); ++k) {
      if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
        s[w++] = id, ++k;
      } else {
        s[w++] = s[k];
      }
    }
    s.resize(w);
  }
  out.insert(out.end(), s.begin(), s.end());
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  std::unordered_map<std::string_view, std::vector<int32_t>> cache;
  auto encode_plain = [&](std::string_view part, bool first) {
    std::string prefixed;
    if (first && add_prefix_space_ && !part.empty() && part[0] != ' ') {
      prefixed.reserve(part.size() + 1);
      prefixed.push_back(' ');
      prefixed.append(part.data(), part.size());
      part = prefixed;
    }
    for (std::string_view w : gpt2_pretokenize(part)) {
      auto it = prefixed.empty() ? cache.find(w) : cache.end();
      if (it == cache.end()) {
        std::vector<int32_t> ids;
        encode_word(w, ids);
        if (!prefixed.empty()) {
          out.insert(out.end(), ids.begin(), ids.end());
          continue;
        }
        it = cache.emplace(w, std::move(ids)).first;
      }
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  };
  // Special tokens are cut out first, as Hugging Face does with added tokens.
  size_t start = 0;
  bool first = true;
  for (size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& [bytes, id] : specials_) {
      if (!bytes.empty() && text.compare(i, bytes.size(), bytes) == 0) {
        encode_plain(text.substr(start, i - start), first);
        out.push_back(id);
        i += bytes.size(), start = i, first = false, hit = true;
        break;
      }
    }
    if (!hit) ++i;
  }
  encode_plain(text.substr(start), first);
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    MOE_CHECK(id >= 0 && id < vocab_size(), "bpe", "token id ", id, " is outside the vocab [0, ",
              vocab_size(), ")");
    out += tokens_[size_t(id)];
  }
  if (add_prefix_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

bool BpeTokenizer::operator==(const BpeTokenizer& o) const {
  return tokens_ == o.tokens_ && merges_ == o.merges_ && special_ == o.special_ &&
         add_prefix_space_ == o.add_prefix_space_;
}

// ---- tokenizer.json ---------------------------------------------------------------------

void BpeTokenizer::save(const std::string& path) const {
  using nlohmann::json;
  json vocab = json::object(), merges = json::array(), added = json::array();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (special_[i]) {
      added.push_back({{"id", i}, {"content", tokens_[i]}, {"single_word", false},
                       {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                       {"special", true}});
      vocab[tokens_[i]] = i;
    } else {
      vocab[bytes_to_symbols(tokens_[i])] = i;
    }
  }
  for (const auto& [a, b] : merges_)
    merges.push_back(bytes_to_symbols(tokens_[size_t(a)]) + " " + bytes_to_symbols(tokens_[size_t(b)]));
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space_},
                           {"trim_offsets", true}, {"use_regex", true}};
  const json j = {{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", added},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", byte_level},
                  {"post_processor", byte_level},
                  {"decoder", byte_level},
                  {"model",
                   {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                    {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                    {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                    {"merges", merges}}}};
  const std::string text = j.dump(1) + "\n";
  write_file_atomic(path, {{text.data(), text.size()}});
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  using nlohmann::json;
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "tokenizer", path, ": cannot open; check the path (a tokenizer.json file)");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    MOE_FAIL("tokenizer", path, ": not valid JSON (", e.what(), ")");
  }
  auto need = [&](const json& obj, const char* key, const char* where) -> const json& {
    MOE_CHECK(obj.is_object() && obj.contains(key), "tokenizer", path, ": missing key \"", where,
              key, "\"");
    return obj.at(key);
  };
  const json& model = need(j, "model", "");
  const json& type = need(model, "type", "model.");
  MOE_CHECK(type == "BPE", "tokenizer", path, ": model.type is ", type.dump(),
            "; only byte-level BPE (\"BPE\") is supported");
  // The pre-tokenizer must be ByteLevel, alone or inside a Sequence.
  const json* byte_level = nullptr;
  if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object()) {
    const json& pt = j["pre_tokenizer"];
    if (pt.value("type", "") == "ByteLevel") byte_level = &pt;
    if (pt.value("type", "") == "Sequence" && pt.contains("pretokenizers"))
      for (const json& p : pt["pretokenizers"])
        if (p.value("type", "") == "ByteLevel") byte_level = &p;
  }
  MOE_CHECK(byte_level != nullptr, "tokenizer", path,
            ": pre_tokenizer is not ByteLevel; only GPT-2-style byte-level BPE files load");
  MOE_CHECK(!j.contains("normalizer") || j["normalizer"].is_null(), "tokenizer", path,
            ": a normalizer is set (", j["normalizer"].value("type", "?"),
            "); byte-level BPE here takes text as is, so remove it");

  BpeTokenizer t;
  t.add_prefix_space_ = byte_level->value("add_prefix_space", false);
  const json& vocab = need(model, "vocab", "model.");
  MOE_CHECK(vocab.is_object(), "tokenizer", path, ": model.vocab must be an object {token: id}");
  std::vector<std::string> tokens(vocab.size());
  std::vector<bool> seen(vocab.size(), false), special(vocab.size(), false);
  std::unordered_map<std::string, bool> is_added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const json& a : j["added_tokens"]) is_added[a.value("content", "")] = true;
  for (const auto& [sym, idj] : vocab.items()) {
    MOE_CHECK(idj.is_number_integer() && idj.get<int64_t>() >= 0 &&
                  idj.get<int64_t>() < int64_t(vocab.size()),
              "tokenizer", path, ": model.vocab[\"", sym, "\"] = ", idj.dump(),
              " is not an id in [0, ", vocab.size(), ")");
    const auto id = size_t(idj.get<int64_t>());
    MOE_CHECK(!seen[id], "tokenizer", path, ": id ", id, " is used twice in model.vocab");
    seen[id] = true;
    if (is_added.count(sym)) {
      tokens[id] = sym, special[id] = true;
    } else {
      MOE_CHECK(symbols_to_bytes(sym, &tokens[id]), "tokenizer", path, ": model.vocab token \"",
                sym, "\" has characters outside the byte-level alphabet");
    }
  }
  // Added tokens may also live only in added_tokens, with ids past the vocab.
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      const auto id = a.value("id", int64_t(-1));
      MOE_CHECK(id >= 0, "tokenizer", path, ": added_tokens entry without a valid \"id\"");
      if (size_t(id) >= tokens.size()) tokens.resize(size_t(id) + 1), seen.resize(tokens.size()),
          special.resize(tokens.size());
      tokens[size_t(id)] = a.value("content", ""), seen[size_t(id)] = true,
                      special[size_t(id)] = true;
    }
  }
  for (size_t i = 0; i < seen.size(); ++i)
    MOE_CHECK(seen[i], "tokenizer", path, ": no token has id ", i, " (ids must be contiguous)");
  std::unordered_map<std::string, int32_t> id_of;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (!special[i]) id_of.emplace(tokens[i], int32_t(i));
  for (int b = 0; b < 256; ++b)
    MOE_CHECK(id_of.count(std::string(1, char(b))), "tokenizer", path, ": byte ", b,
              " has no token; a byte-level vocab holds all 256");

  const json& merges = need(model, "merges", "model.");
  MOE_CHECK(merges.is_array(), "tokenizer", path, ": model.merges must be an array");
  for (size_t r = 0; r < merges.size(); ++r) {
    std::string left, right;  // "a b" (classic) or ["a", "b"] (tokenizers >= 0.20)
    if (merges[r].is_string()) {
      const std::string m = merges[r].get<std::string>();
      const size_t sp = m.find(' ');
      MOE_CHECK(sp != std::string::npos, "tokenizer", path, ": model.merges[", r, "] = \"", m,
                "\" is not \"left right\"");
      left = m.substr(0, sp), right = m.substr(sp + 1);
    } else {
      MOE_CHECK(merges[r].is_array() && merges[r].size() == 2, "tokenizer", path,
                ": model.merges[", r, "] is neither \"a b\" nor [\"a\", \"b\"]");
      left = merges[r][0].get<std::string>(), right = merges[r][1].get<std::string>();
    }
    std::string lb, rb;
    MOE_CHECK(symbols_to_bytes(left, &lb) && symbols_to_bytes(right, &rb) && id_of.count(lb) &&
                  id_of.count(rb) && id_of.count(lb + rb),
              "tokenizer", path, ": model.merges[", r, "] = \"", left, " ", right,
              "\" uses a token that is not in model.vocab");
    t.merges_.push_back({id_of[lb], id_of[rb]});
  }
  t.tokens_ = std::move(tokens);
  t.special_ = std::move(special);
  t.build_index();
  return t;
}

}  // namespace moe
