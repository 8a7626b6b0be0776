// Checkpoint directory: config.json + model.safetensors (HF names, [out, in] shapes, F32).
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace moe {

// Writes dir/config.json and dir/model.safetensors (creating dir). Tied lm_head is not stored.
void save_checkpoint(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                     const float* params);

// Reads dir/config.json and dir/model.safetensors into cfg and params (resized to the layout).
// Every tensor of the layout must be present with its shape and dtype F32; extra tensors are an
// error. Errors name the file and the tensor and say how to fix it.
void load_checkpoint(const std::string& dir, ModelConfig* cfg, std::vector<float>* params);

}  // namespace moe
