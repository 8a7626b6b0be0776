// The [data] section made into token streams: the built-in corpus in memory, a text file
// tokenized once into a shard cache, or a folder made by `moe data prepare`.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "data/corpus.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "data/tokenizers.h"
#include "parallel/parallel.h"
#include "train/trainer.h"

namespace moe {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string at(const DataConfig& dc, const std::string& key) {
  const auto it = dc.where.find(key);
  return it == dc.where.end() ? "" : " (" + it->second + ")";
}

// What a cache folder was made from; the cache is reused only when all of it matches.
json source_fingerprint(const std::string& source, const Tokenizer& tok, double val_fraction) {
  struct stat st {};
  ::stat(source.c_str(), &st);
  uint32_t tok_crc = 0;
  if (tok.spec() != "byte") tok_crc = crc32c_file(tok.spec());
  return {{"format", 1},
          {"source", fs::absolute(source).lexically_normal().string()},
          {"bytes", int64_t(st.st_size)},
          {"mtime_ns", int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec},
          {"tokenizer", tok.spec()},
          {"tokenizer_crc32c", tok_crc},
          {"val_fraction", val_fraction}};
}

std::shared_ptr<const TokenDataset> open_cached(const std::string& source, const Tokenizer& tok,
                                                double val_fraction, const std::string& cache_dir) {
  const json want = source_fingerprint(source, tok, val_fraction);
  const fs::path fp = fs::path(cache_dir) / "source.json";
  std::error_code ec;
  if (fs::exists(fp, ec)) {
    try {
      std::ifstream f(fp);
      if (json::parse(f) == want) return std::make_shared<const TokenDataset>(cache_dir);
    } catch (const std::exception&) {
      // A damaged cache is rebuilt below.
    }
  }
  fs::remove(fp, ec);  // the shards are about to change: no stale fingerprint in between
  PrepareOptions o;
  o.inputs = {source};
  o.tokenizer = tok.spec();
  o.out = cache_dir;
  o.val_fraction = val_fraction;
  prepare_dataset(o);
  auto ds = std::make_shared<const TokenDataset>(cache_dir);
  const std::string text = want.dump(1) + "\n";
  write_file_atomic(fp.string(), {{text.data(), text.size()}});
  return ds;
}

}  // namespace

int64_t TokenData::train_tokens() const {
  return dataset ? dataset->tokens(Split::kTrain) : int64_t(train.size());
}
int64_t TokenData::val_tokens() const {
  return dataset ? dataset->tokens(Split::kVal) : int64_t(val.size());
}

void sample_train_batch(int32_t* tokens, const TokenData& data, int64_t B, int64_t T,
                        uint64_t seed, int64_t step, int64_t micro) {
  if (data.dataset) {
    data.dataset->sample_windows(tokens, B, T, seed, step, micro, 0);
  } else {
    sample_batch(tokens, data.train, B, T, seed, step, micro);
  }
}

double evaluate(Model& model, const TokenData& data, int64_t T, int64_t batch, int64_t max_tokens,
                int64_t* tokens_out, Parallel* par, MtpEval* mtp) {
  int64_t use = 0;
  std::function<void(int32_t*, int64_t, int64_t)> fill;  // (buf, first window, windows)
  if (data.dataset) {
    const TokenDataset& ds = *data.dataset;
    use = ds.val_windows(T);
    fill = [&ds, T](int32_t* buf, int64_t first, int64_t n) { ds.val_batch(buf, n, T, first); };
  } else {
    use = (static_cast<int64_t>(data.val.size()) - 1) / T;
    fill = consecutive_windows(data.val, T);
  }
  if (max_tokens > 0) use = std::min(use, std::max<int64_t>(1, max_tokens / T));
  if (!par || !par->distributed())
    return evaluate_windows(model, use, T, batch, fill, tokens_out, mtp);

  // Each rank evaluates its slice of every batch of windows. Slices are ceil(nb / ranks) long;
  // a rank past the end pads its slice with window 0 (which it does not count), so that every
  // rank runs the same collectives.
  const int64_t W = par->world_size(), r = par->rank();
  double acc[6] = {0, 0, 0, 0, 0, 0};  // CE sum, tokens; MTP positions, hits, agree, CE sum
  std::vector<int32_t> buf;
  for (int64_t w0 = 0; w0 < use; w0 += batch) {
    const int64_t nb = std::min(batch, use - w0), c = (nb + W - 1) / W;
    const int64_t first = w0 + r * c, real = std::max<int64_t>(0, std::min(c, w0 + nb - first));
    buf.assign(size_t(c * (T + 1)), 0);
    if (real > 0) fill(buf.data(), first, real);
    for (int64_t b = real; b < c; ++b) fill(buf.data() + b * (T + 1), 0, 1);
    const LossStats st = model.forward(buf.data(), c, T);
    const float* losses = model.token_losses();
    for (int64_t i = 0; i < real * T; ++i) acc[0] += double(losses[i]);
    acc[1] += double(real * T);
    if (mtp && real == c && !st.mtp_ce.empty()) {
      acc[2] += double(st.mtp_positions), acc[3] += double(st.mtp_hits);
      acc[4] += double(st.mtp_agree), acc[5] += st.mtp_ce[0] * double(st.mtp_positions);
    }
  }
  model.reset_load();
  par->all_reduce_sum(acc, 6);
  if (mtp) {
    mtp->positions += int64_t(acc[2]), mtp->hits += int64_t(acc[3]);
    mtp->agree += int64_t(acc[4]), mtp->ce_sum += acc[5];
  }
  if (tokens_out) *tokens_out = int64_t(acc[1]);
  return acc[1] > 0 ? acc[0] / acc[1] : 0.0;
}

TokenData load_data(const DataConfig& dc, const std::string& cache_dir) {
  TokenData data;
  if (dc.source == "builtin") {
    MOE_CHECK(dc.tokenizer.empty() || dc.tokenizer == "byte", "data", "[data] tokenizer = \"",
              dc.tokenizer, "\"", at(dc, "tokenizer"),
              ": the built-in corpus is bytes; remove the key or set it to \"byte\"");
    const Corpus train = make_builtin_corpus(1, dc.builtin_bytes);
    const Corpus val = make_builtin_corpus(2, std::max<int64_t>(dc.builtin_bytes / 16, 1 << 16));
    data.train = byte_encode(train.text);
    data.val = byte_encode(val.text);
    data.entropy_floor = train.entropy_nats_per_byte;
    data.name = "built-in corpus";
    data.decode = [](const std::vector<int32_t>& t) { return byte_decode(t); };
    data.sample_prompt = byte_encode("\n");
    return data;
  }

  std::error_code ec;
  const fs::path src(dc.source);
  MOE_CHECK(fs::exists(src, ec), "data", "[data] source = \"", dc.source, "\"", at(dc, "source"),
            ": no such file or folder; give \"builtin\", a text file, or a folder made by "
            "`moe data prepare`");
  std::shared_ptr<const Tokenizer> tok;
  if (fs::is_directory(src, ec)) {
    MOE_CHECK(fs::exists(src / "manifest.json", ec), "data", "[data] source = \"", dc.source,
              "\"", at(dc, "source"), ": the folder has no manifest.json; make it with `moe data "
              "prepare FILES --out ", dc.source, "` or give a text file");
    data.dataset = std::make_shared<const TokenDataset>(dc.source);
    tok = make_tokenizer(data.dataset->tokenizer_spec());
    if (!dc.tokenizer.empty()) {
      // A tokenizer given as well must be the one the folder was made with.
      const std::unique_ptr<Tokenizer> given = make_tokenizer(dc.tokenizer);
      const bool same = given->spec() == tok->spec() ||
                        (given->spec() != "byte" && tok->spec() != "byte" &&
                         crc32c_file(given->spec()) == crc32c_file(tok->spec()));
      MOE_CHECK(same, "data", "[data] tokenizer = \"", dc.tokenizer, "\"", at(dc, "tokenizer"),
                " differs from the tokenizer the prepared folder ", dc.source, " was made with (",
                tok->name(), "); remove the key (the folder's own is used) or re-run `moe data "
                "prepare` with it");
    }
    data.name = dc.source + " (prepared, " + tok->name() + ")";
  } else {
    tok = make_tokenizer(dc.tokenizer.empty() ? "byte" : dc.tokenizer);
    if (!cache_dir.empty()) {
      data.dataset = open_cached(dc.source, *tok, dc.val_fraction, cache_dir);
    } else {
      // No run folder: prepare into a temporary folder; the mappings outlive its removal.
      static std::atomic<int> counter{0};
      const fs::path tmp = fs::temp_directory_path() /
                           ("moe_data_" + std::to_string(::getpid()) + "_" +
                            std::to_string(counter++));
      fs::remove_all(tmp, ec);
      try {
        data.dataset = open_cached(dc.source, *tok, dc.val_fraction, tmp.string());
      } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
      }
      fs::remove_all(tmp, ec);
    }
    data.name = dc.source + " (" + tok->name() + ")";
  }
  data.tokenizer_spec = tok->spec();
  data.vocab_size = data.dataset->vocab_size();
  data.decode = [tok](const std::vector<int32_t>& t) { return tok->decode(t); };
  data.sample_prompt = tok->encode("\n");
  return data;
}

void check_vocab(const ModelConfig& cfg, const TokenData& data, const std::string& where) {
  MOE_CHECK(cfg.vocab_size >= data.vocab_size, "config", "[model] vocab_size = ", cfg.vocab_size,
            where.empty() ? "" : " (" + where + ")", " is smaller than the vocab of the data's "
            "tokenizer (", data.vocab_size, ", ", data.tokenizer_spec, "); set vocab_size = ",
            data.vocab_size, " in [model] (or --model.vocab_size ", data.vocab_size, ")");
}

}  // namespace moe
