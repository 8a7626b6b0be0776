#include "model/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/safetensors.h"

namespace moe {

namespace {

constexpr const char* kOp = "checkpoint";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Re-throws an error from a lower layer with the checkpoint context in front.
template <class F>
auto with_context(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    MOE_FAIL(kOp, what, ": ", e.what());
  }
}

}  // namespace

void save_checkpoint(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                     const float* params) {
  cfg.validate();
  const ParamLayout expect = make_layout(cfg);
  MOE_CHECK(layout.total_numel == expect.total_numel && layout.specs.size() == expect.specs.size(),
            kOp, "cannot save to ", dir, ": the layout (", layout.specs.size(), " tensors, ",
            layout.total_numel, " floats) does not match the config (", expect.specs.size(),
            " tensors, ", expect.total_numel, " floats); build it with make_layout(cfg)");
  MOE_CHECK(params != nullptr || layout.total_numel == 0, kOp, "cannot save to ", dir,
            ": no parameter buffer given");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MOE_CHECK(!ec && std::filesystem::is_directory(dir), kOp, "cannot create the directory ", dir,
            ": ", ec ? ec.message() : "a file of that name exists",
            "; choose another path or fix its permissions");

  std::vector<TensorRef> refs;
  refs.reserve(layout.specs.size());
  for (const auto& s : layout.specs)  // a tied lm_head has no spec of its own
    refs.push_back({s.name, "F32", s.shape, params + s.offset});
  const std::string base = std::filesystem::path(dir).string();
  // Weights first, then config: a directory with a config.json is complete.
  write_safetensors(base + "/" + kWeightsFile, refs, {{"format", "pt"}});
  save_config(cfg, base + "/" + kConfigFile);
}

void load_checkpoint(const std::string& dir, ModelConfig* cfg, std::vector<float>* params) {
  MOE_CHECK(cfg != nullptr && params != nullptr, kOp, "load_checkpoint needs cfg and params");
  std::error_code ec;
  MOE_CHECK(std::filesystem::exists(dir, ec), kOp, "no checkpoint directory ", dir,
            "; pass a directory written by save_checkpoint (it holds ", kConfigFile, " and ",
            kWeightsFile, ")");
  MOE_CHECK(std::filesystem::is_directory(dir, ec), kOp, dir,
            " is not a directory; pass the checkpoint directory that holds ", kConfigFile,
            " and ", kWeightsFile);
  const std::string cfg_path = dir + "/" + kConfigFile;
  const std::string st_path = dir + "/" + kWeightsFile;
  MOE_CHECK(std::filesystem::exists(cfg_path, ec), kOp, "checkpoint ", dir, " has no ",
            kConfigFile, "; the save was interrupted or this is not a checkpoint directory");
  MOE_CHECK(std::filesystem::exists(st_path, ec), kOp, "checkpoint ", dir, " has no ",
            kWeightsFile, "; the save was interrupted or this is not a checkpoint directory");

  const ModelConfig c = with_context("checkpoint " + dir, [&] { return load_config(cfg_path); });
  const SafetensorsFile f =
      with_context("checkpoint " + dir, [&] { return read_safetensors(st_path); });
  const ParamLayout layout = make_layout(c);

  // Check everything before allocating: a config with huge sizes must not allocate them.
  std::set<std::string> expected;
  std::vector<std::string> missing;
  for (const auto& s : layout.specs) {
    expected.insert(s.name);
    if (!f.has(s.name)) {
      missing.push_back(s.name);
      continue;
    }
    const TensorData& t = f.tensors.at(s.name);
    MOE_CHECK(t.dtype == "F32", kOp, st_path, ": tensor '", s.name, "' has dtype ", t.dtype,
              ", expected F32; convert the checkpoint to float32");
    MOE_CHECK(t.shape == s.shape, kOp, st_path, ": tensor '", s.name, "' has shape ",
              shape_str(t.shape), " but ", cfg_path, " implies ", shape_str(s.shape),
              "; the weights and config.json come from different models");
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += ", ...";
    const bool lm = missing.front() == "lm_head.weight" || missing.back() == "lm_head.weight";
    MOE_FAIL(kOp, st_path, " is missing ", missing.size(), " tensor(s) that ", cfg_path,
             " requires: ", list,
             lm ? "; if lm_head is tied to the embeddings set \"tie_word_embeddings\": true"
                : "; the weights and config.json come from different models or the save was "
                  "interrupted");
  }
  for (const auto& [name, t] : f.tensors) {
    if (expected.count(name)) continue;
    MOE_CHECK(!(name == "lm_head.weight" && c.tie_word_embeddings), kOp, st_path,
              " holds lm_head.weight but ", cfg_path,
              " sets tie_word_embeddings = true; set it to false or drop the tensor");
    MOE_FAIL(kOp, st_path, " holds tensor '", name, "' (shape ", shape_str(t.shape),
             ") that ", cfg_path, " does not define; the weights and config.json come from "
             "different models");
  }

  params->assign(static_cast<size_t>(layout.total_numel), 0.0f);
  for (const auto& s : layout.specs) {
    const TensorData& t = f.tensors.at(s.name);
    std::memcpy(params->data() + s.offset, t.bytes.data(), t.bytes.size());
  }
  *cfg = c;
}

}  // namespace moe
