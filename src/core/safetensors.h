// safetensors reader and writer (https://huggingface.co/docs/safetensors): 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
// then the raw little-endian data. Malformed or truncated files raise moe::Error naming the
// file and what is wrong; they never crash.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe {

struct TensorData {
  std::string dtype;             // "F32", "F64", "I32", "I64", "BF16", "F16", "U8", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;    // raw little-endian data, size = numel * dtype size

  int64_t numel() const;
  // Copies the data out as float / double / int32 (dtype must match exactly; F32<->F64 and
  // I32<->I64 convert). Throws naming `name` otherwise.
  std::vector<float> as_f32(const std::string& name) const;
  std::vector<double> as_f64(const std::string& name) const;
  std::vector<int32_t> as_i32(const std::string& name) const;
};

struct SafetensorsFile {
  std::map<std::string, TensorData> tensors;
  std::map<std::string, std::string> metadata;

  const TensorData& at(const std::string& name) const;  // throws naming the file and tensor
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
  std::string path;  // where it was read from, for messages
};

// A tensor to write: the data is not copied.
struct TensorRef {
  std::string name;
  std::string dtype;  // "F32", "F64", "I32", "I64"
  std::vector<int64_t> shape;
  const void* data;
};

SafetensorsFile read_safetensors(const std::string& path);
// Writes to path + ".tmp", fsyncs, then renames over path.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

size_t dtype_size(const std::string& dtype);  // throws on an unknown dtype

// Writes the chunks to path + ".tmp", fsyncs, renames over path and fsyncs the directory, so a
// reader sees the old file or the new one, never a torn one (also used for config.json).
void write_file_atomic(const std::string& path,
                       const std::vector<std::pair<const void*, size_t>>& chunks);

}  // namespace moe
