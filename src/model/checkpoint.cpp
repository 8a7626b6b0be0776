#include "model/checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/dtype.h"
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

// config.json: the model's keys (config_to_json) plus the weights file's torch_dtype and, for
// int8, its quantization_config.
void write_config(const std::string& path, const ModelConfig& cfg, WeightFormat format) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(config_to_json(cfg));
  j["torch_dtype"] = format == WeightFormat::kBF16 ? "bfloat16" : "float32";
  if (format == WeightFormat::kInt8)
    j["quantization_config"] = {
        {"quant_method", kInt8QuantMethod},
        {"bits", 8},
        {"granularity", "per_channel"},
        {"symmetric", true},
        {"scale_suffix", "_scale"},
        {"activation", "dynamic per-token u8 (asymmetric)"},
        {"modules_not_converted",
         {"model.embed_tokens", "mlp.gate", "layernorm", "model.norm", "lm_head"}}};
  const std::string text = j.dump(2) + "\n";
  write_file_atomic(path, {{text.data(), text.size()}});
}

// Reads torch_dtype and quantization_config from config.json into info (a file that is not
// JSON is left to load_config to report).
void read_weight_keys(const std::string& path, CheckpointInfo* info) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return;  // load_config reported it
  if (j.contains("torch_dtype")) {
    const auto& v = j.at("torch_dtype");
    const bool ok = v.is_string() && (v == "float32" || v == "bfloat16");
    MOE_CHECK(ok, kOp, path, ": torch_dtype = ", v.dump().substr(0, 60),
              " is not supported (known: \"float32\", \"bfloat16\"); write one of them or "
              "re-export the model with moe quantize --dtype bf16");
    info->torch_dtype = v.get<std::string>();
    if (info->torch_dtype == "bfloat16") info->format = WeightFormat::kBF16;
  }
  if (!j.contains("quantization_config")) return;
  const auto& q = j.at("quantization_config");
  const char* fix =
      "; re-create the folder with moe quantize --dtype int8 from the fp32 checkpoint";
  MOE_CHECK(q.is_object(), kOp, path, ": quantization_config is a JSON ", q.type_name(),
            ", expected an object such as {\"quant_method\": \"", kInt8QuantMethod, "\"}", fix);
  MOE_CHECK(q.contains("quant_method") && q.at("quant_method").is_string(), kOp, path,
            ": quantization_config has no quant_method string (moe.cpp reads \"", kInt8QuantMethod,
            "\")", fix);
  const std::string method = q.at("quant_method").get<std::string>();
  MOE_CHECK(method == kInt8QuantMethod, kOp, path, ": quantization_config.quant_method = \"",
            method.substr(0, 60), "\" is not supported (moe.cpp reads \"", kInt8QuantMethod,
            "\", written by moe quantize)", fix);
  if (q.contains("bits"))
    MOE_CHECK(q.at("bits") == 8, kOp, path,
              ": quantization_config.bits = ", q.at("bits").dump().substr(0, 40), ", but ",
              kInt8QuantMethod, " stores 8 bits", fix);
  if (q.contains("granularity"))
    MOE_CHECK(q.at("granularity") == "per_channel", kOp, path,
              ": quantization_config.granularity = ", q.at("granularity").dump().substr(0, 40),
              ", but ", kInt8QuantMethod, " has one scale per output channel (\"per_channel\")",
              fix);
  info->format = WeightFormat::kInt8;
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return "float32";
    case WeightFormat::kBF16:
      return "bfloat16";
    case WeightFormat::kInt8:
      return "int8";
  }
  return "?";
}

void save_checkpoint(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                     const float* params, const SaveOptions& opt) {
  cfg.validate();
  const ParamLayout expect = make_layout(cfg);
  MOE_CHECK(layout.total_numel == expect.total_numel && layout.specs.size() == expect.specs.size(),
            kOp, "cannot save to ", dir, ": the layout (", layout.specs.size(), " tensors, ",
            layout.total_numel, " floats) does not match the config (", expect.specs.size(),
            " tensors, ", expect.total_numel, " floats); build it with make_layout(cfg)");
  MOE_CHECK(params != nullptr || layout.total_numel == 0, kOp, "cannot save to ", dir,
            ": no parameter buffer given");
  MOE_CHECK(opt.format != WeightFormat::kInt8 || opt.int8, kOp, "cannot save ", dir,
            " in int8: no int8 weights given (SaveOptions::int8); quantize with moe quantize");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MOE_CHECK(!ec && std::filesystem::is_directory(dir), kOp, "cannot create the directory ", dir,
            ": ", ec ? ec.message() : "a file of that name exists",
            "; choose another path or fix its permissions");

  std::vector<TensorRef> refs;
  refs.reserve(2 * layout.specs.size());
  std::vector<std::vector<uint16_t>> bf16;  // the bf16 copies, alive until written
  bf16.reserve(layout.specs.size());
  for (const auto& s : layout.specs) {  // a tied lm_head has no spec of its own
    const float* p = params + s.offset;
    if (opt.format == WeightFormat::kBF16) {
      std::vector<uint16_t>& h = bf16.emplace_back(static_cast<size_t>(s.numel));
      for (int64_t i = 0; i < s.numel; ++i) h[i] = f32_to_bf16(p[i]);
      refs.push_back({s.name, "BF16", s.shape, h.data()});
      continue;
    }
    const Int8Data q = opt.format == WeightFormat::kInt8 ? opt.int8(s) : Int8Data{};
    if (q.q == nullptr) {
      refs.push_back({s.name, "F32", s.shape, p});
      continue;
    }
    MOE_CHECK(s.shape.size() == 2 && q.scale != nullptr, kOp, "cannot save ", dir, ": tensor '",
              s.name, "' of shape ", shape_str(s.shape),
              " was given as int8, but only [out, in] weights with a scale per row can be");
    refs.push_back({s.name, "I8", s.shape, q.q});
    refs.push_back({s.name + "_scale", "F32", {s.shape[0]}, q.scale});
  }
  const std::string base = std::filesystem::path(dir).string();
  // Weights first, then config: a directory with a config.json is complete.
  write_safetensors(base + "/" + kWeightsFile, refs, {{"format", "pt"}});
  write_config(base + "/" + kConfigFile, cfg, opt.format);
}

CheckpointInfo load_checkpoint(const std::string& dir, ModelConfig* cfg, std::vector<float>* params,
                               const Int8Sink& int8) {
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

  // The weights' keys first: a foreign quantization_config gets the checkpoint's message (how
  // to re-export), not the model config's.
  CheckpointInfo info;
  read_weight_keys(cfg_path, &info);
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
    MOE_CHECK(t.dtype == "F32" || t.dtype == "BF16" || t.dtype == "I8", kOp, st_path, ": tensor '",
              s.name, "' has dtype ", t.dtype,
              ", expected F32 or BF16 (or I8 in an int8 checkpoint); convert the checkpoint to "
              "float32");
    MOE_CHECK(t.shape == s.shape, kOp, st_path, ": tensor '", s.name, "' has shape ",
              shape_str(t.shape), " but ", cfg_path, " implies ", shape_str(s.shape),
              "; the weights and config.json come from different models");
    if (t.dtype != "I8") continue;
    const std::string sname = s.name + "_scale";
    const char* fix = "; re-create the folder with moe quantize --dtype int8";
    MOE_CHECK(info.format == WeightFormat::kInt8, kOp, st_path, ": tensor '", s.name,
              "' is I8 but ", cfg_path, " has no quantization_config (quant_method \"",
              kInt8QuantMethod, "\"); use the config.json written with these weights", fix);
    MOE_CHECK(s.shape.size() == 2, kOp, st_path, ": tensor '", s.name, "' of shape ",
              shape_str(s.shape), " is I8, but only [out, in] weights can be int8", fix);
    MOE_CHECK(f.has(sname), kOp, st_path, ": int8 tensor '", s.name, "' has no scale '", sname,
              "' (F32 [", s.shape[0], "], one per output row); the file is incomplete", fix);
    const TensorData& sc = f.tensors.at(sname);
    MOE_CHECK(sc.dtype == "F32" && sc.shape == std::vector<int64_t>{s.shape[0]}, kOp, st_path,
              ": scale '", sname, "' is ", sc.dtype, " ", shape_str(sc.shape), ", expected F32 [",
              s.shape[0], "] (one per output row of '", s.name, "')", fix);
    expected.insert(sname);
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
    const std::string base = name.size() > 6 && name.compare(name.size() - 6, 6, "_scale") == 0
                                 ? name.substr(0, name.size() - 6)
                                 : "";
    MOE_CHECK(base.empty() || !expected.count(base), kOp, st_path, " holds the scale '", name,
              "' but '", base, "' is stored as ",
              f.tensors.count(base) ? f.tensors.at(base).dtype : std::string("?"),
              ", not I8; drop the scale or re-create the folder with moe quantize");
    MOE_CHECK(!(name == "lm_head.weight" && c.tie_word_embeddings), kOp, st_path,
              " holds lm_head.weight but ", cfg_path,
              " sets tie_word_embeddings = true; set it to false or drop the tensor");
    MOE_FAIL(kOp, st_path, " holds tensor '", name, "' (shape ", shape_str(t.shape),
             ") that ", cfg_path, " does not define; the weights and config.json come from "
             "different models");
  }

  params->assign(static_cast<size_t>(layout.total_numel), 0.0f);
  std::vector<float> scale;
  for (const auto& s : layout.specs) {
    const TensorData& t = f.tensors.at(s.name);
    float* p = params->data() + s.offset;
    if (t.dtype == "F32") {
      std::memcpy(p, t.bytes.data(), t.bytes.size());
    } else if (t.dtype == "BF16") {
      for (int64_t i = 0; i < s.numel; ++i) {
        uint16_t h;
        std::memcpy(&h, t.bytes.data() + 2 * i, 2);
        p[i] = bf16_to_f32(h);
      }
      ++info.bf16_tensors;
    } else {  // I8 [out, in] with its scale (out), checked above
      const int64_t out = s.shape[0], in = s.shape[1];
      const TensorData& sc = f.tensors.at(s.name + "_scale");
      scale.resize(static_cast<size_t>(out));
      std::memcpy(scale.data(), sc.bytes.data(), sc.bytes.size());
      const int8_t* q = reinterpret_cast<const int8_t*>(t.bytes.data());
      for (int64_t o = 0; o < out; ++o) {
        MOE_CHECK(std::isfinite(scale[o]), kOp, st_path, ": scale '", s.name, "_scale' row ", o,
                  " is ", scale[o], "; the file is damaged, re-create it with moe quantize");
        for (int64_t i = 0; i < in; ++i) p[o * in + i] = float(q[o * in + i]) * scale[o];
      }
      if (int8) int8(s, q, scale.data());
      ++info.int8_tensors;
    }
  }
  *cfg = c;
  return info;
}

}  // namespace moe
