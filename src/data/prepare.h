// Text files -> a token-shard dataset (data/shards.h): the work behind `moe data prepare`, also
// used by the trainer to cache a tokenized text file in its run folder.
//
// Every input file (folders recursively, sorted, hidden files skipped) is one document, streamed
// through the tokenizer into shards. The validation split is the tail of files: after each file,
// enough of its end goes to val to bring the val bytes to val_fraction of all bytes so far (a
// big file gives its last val_fraction, and among many small files about one in 1/val_fraction
// goes to val whole). The cut is moved to a line start when one is near, so val begins on a
// fresh line. After each part, the tokenizer's eos (if it has one) ends the document.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/shards.h"

namespace moe {

struct PrepareOptions {
  std::vector<std::string> inputs;     // {"data/books", "extra.txt"}
  std::string tokenizer = "byte";      // "byte" or "runs/tok/tokenizer.json" (or its folder)
  std::string out;                     // "data/shakespeare"
  double val_fraction = 0.005;         // of the input bytes, in [0, 0.5]
  int64_t shard_tokens = 100000000;    // tokens per shard
  // Called now and then with (bytes done, bytes total, tokens so far); may be empty.
  std::function<void(int64_t, int64_t, int64_t)> progress;
};

struct PrepareResult {
  DatasetManifest manifest;
  int64_t files = 0, bytes = 0;        // inputs read
  int64_t train_tokens = 0, val_tokens = 0;
  std::string tokenizer_name;          // "byte" or "bpe (vocab 4096, ...)"
};

// Regular files named by the inputs, folders walked recursively; sorted within each folder so
// the token order (and so every shard) is the same on every machine. Skips hidden entries and
// anything under `exclude` (the output folder, when it sits inside an input folder).
std::vector<std::filesystem::path> collect_files(const std::vector<std::string>& inputs,
                                                 const std::filesystem::path& exclude);

// Writes o.out/{train,val}_NNNNNN.bin, a copy of the tokenizer.json (BPE) and manifest.json
// (last, atomically); removes shards of an earlier run in the same folder that are no longer
// listed. Throws moe::Error naming the input or setting at fault.
PrepareResult prepare_dataset(const PrepareOptions& o);

}  // namespace moe
