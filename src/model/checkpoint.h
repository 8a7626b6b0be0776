// Checkpoint directory: config.json + model.safetensors (HF names, [out, in] shapes).
//
// Three weight formats, all loaded back as fp32 master weights:
//  - float32 (the default): every tensor F32; config.json "torch_dtype": "float32".
//  - bfloat16 (an export): every tensor BF16, rounded to nearest even; "torch_dtype": "bfloat16".
//  - int8 (`moe quantize`): the weights the caller chooses as I8 [out, in] plus
//    "<name>_scale" F32 [out] (W ~= q * scale per output row, e.g.
//    "model.layers.0.self_attn.q_proj.weight_scale"), the rest F32; config.json carries
//    "quantization_config": {"quant_method": "moe.cpp-int8", "bits": 8,
//    "granularity": "per_channel", ...}. Which weights are int8 is decided by the infer layer
//    (model/quantized.h); this file only reads and writes the format.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace moe {

enum class WeightFormat { kF32, kBF16, kInt8 };

// "float32", "bfloat16", "int8": the names `moe quantize --dtype` and config.json use.
const char* weight_format_name(WeightFormat f);

// The quant_method this build writes and reads.
inline constexpr const char* kInt8QuantMethod = "moe.cpp-int8";

// The int8 copy of one [out, in] weight: q [out, in], scale (out). {nullptr, nullptr}: none.
struct Int8Data {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
};

struct SaveOptions {
  WeightFormat format = WeightFormat::kF32;
  // kInt8 only: the int8 copy of the weight `spec` to store, or {} to store it in fp32.
  std::function<Int8Data(const ParamSpec& spec)> int8;
};

// Writes dir/config.json and dir/model.safetensors (creating dir). Tied lm_head is not stored.
void save_checkpoint(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                     const float* params, const SaveOptions& opt = {});

// What load_checkpoint found in the folder.
struct CheckpointInfo {
  WeightFormat format = WeightFormat::kF32;  // kInt8 if config.json has a quantization_config
  std::string torch_dtype = "float32";       // config.json's ("float32" when absent)
  int64_t int8_tensors = 0;                  // I8 weights read (dequantized into params)
  int64_t bf16_tensors = 0;                  // BF16 tensors read (widened into params)
};

// Sees each I8 weight of an int8 checkpoint with its stored q [out, in] and scale (out), valid
// during the call only.
using Int8Sink = std::function<void(const ParamSpec& spec, const int8_t* q, const float* scale)>;

// Reads dir/config.json and dir/model.safetensors into cfg and params (resized to the layout).
// Every tensor of the layout must be present with its shape, as F32 or BF16 (widened), or as
// I8 with its "_scale" in an int8 checkpoint (dequantized: q * scale; `int8` also sees it);
// extra tensors are an error. Errors name the file and the tensor and say how to fix it.
CheckpointInfo load_checkpoint(const std::string& dir, ModelConfig* cfg, std::vector<float>* params,
                               const Int8Sink& int8 = {});

}  // namespace moe
