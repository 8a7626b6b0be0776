// moe quantize --checkpoint DIR --out DIR2 [--dtype int8|bf16|fp32]: re-export a model folder.
//
// int8 (default): the linear weights (*_proj.weight) as I8 with one F32 scale per output row,
// the embedding, router, norms and lm_head in float32 (model/quantized.h says why);
// bf16: every tensor in bfloat16 (round to nearest even); fp32: every tensor in float32 (e.g.
// to dequantize an int8 folder). The source may be any of the three. The tokenizer.json of the
// source folder, if any, is copied.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/quantized.h"
#include "model/checkpoint.h"

namespace {

using namespace moe;
namespace fs = std::filesystem;

struct QuantizeOptions {
  std::string checkpoint;      // "runs/small" (a folder with config.json + model.safetensors)
  std::string out;             // "runs/small-int8"
  std::string dtype = "int8";  // int8, bf16 or fp32
};

WeightFormat parse_export_dtype(const std::string& s) {
  if (s == "int8") return WeightFormat::kInt8;
  if (s == "bf16" || s == "bfloat16") return WeightFormat::kBF16;
  if (s == "fp32" || s == "float32") return WeightFormat::kF32;
  MOE_FAIL("quantize", "unknown --dtype '", s, "' (allowed: int8, bf16, fp32)");
}

double mib(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0.0 : double(n) / (1024.0 * 1024.0);
}

// sqrt(sum (W - q*scale)^2 / sum W^2) over the int8 weights: how much the rounding moved them.
double relative_rms_error(const ParamLayout& lay, const std::vector<float>& params,
                          const Int8Weights& int8) {
  double err = 0, norm = 0;
  for (const ParamSpec& s : lay.specs) {
    const Int8Data d = int8.data(s);
    if (d.q == nullptr) continue;
    const int64_t out = s.shape[0], in = s.shape[1];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        const double w = params[size_t(s.offset + o * in + i)];
        const double e = w - double(d.q[o * in + i]) * double(d.scale[o]);
        err += e * e;
        norm += w * w;
      }
  }
  return norm > 0 ? std::sqrt(err / norm) : 0.0;
}

void run_quantize(const QuantizeOptions& o) {
  const WeightFormat format = parse_export_dtype(o.dtype);
  std::error_code ec;
  MOE_CHECK(!fs::exists(o.out, ec) || !fs::equivalent(o.checkpoint, o.out, ec), "quantize",
            "--out ", o.out, " is the source folder; write the export to another folder");
  ModelConfig cfg;
  std::vector<float> params;
  Int8Weights int8;
  // An int8 source keeps its stored int8 values; an fp32 / bf16 source is quantized here.
  const CheckpointInfo src =
      load_quantized(o.checkpoint, &cfg, &params, &int8, format == WeightFormat::kInt8);
  const ParamLayout lay = make_layout(cfg);
  if (format == WeightFormat::kInt8) {
    save_quantized(o.out, cfg, lay, params.data(), int8);
  } else {
    SaveOptions opt;
    opt.format = format;
    save_checkpoint(o.out, cfg, lay, params.data(), opt);
  }
  const fs::path tok = fs::path(o.checkpoint) / "tokenizer.json";
  if (fs::is_regular_file(tok, ec)) {
    std::ifstream in(tok, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    MOE_CHECK(in.good() || in.eof(), "quantize", "cannot read ", tok.string());
    const std::string text = ss.str();
    write_file_atomic((fs::path(o.out) / "tokenizer.json").string(), {{text.data(), text.size()}});
  }
  std::printf("moe quantize: %s (%s, %.2f MiB) -> %s (%s, %.2f MiB)%s\n", o.checkpoint.c_str(),
              weight_format_name(src.format), mib(fs::path(o.checkpoint) / "model.safetensors"),
              o.out.c_str(), weight_format_name(format), mib(fs::path(o.out) / "model.safetensors"),
              fs::is_regular_file(tok, ec) ? ", tokenizer.json copied" : "");
  if (format == WeightFormat::kInt8)
    std::printf(
        "int8: %lld of %zu tensors (the *_proj.weight linear weights), one scale per "
        "output row, relative RMS rounding error %.3g; embedding, router, norms, "
        "balancing bias and lm_head kept float32\n",
        static_cast<long long>(int8.tensors()), lay.specs.size(),
        relative_rms_error(lay, params, int8));
}

}  // namespace

void add_quantize_commands(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  auto* sub = app.add_subcommand(
      "quantize", "export a model folder as int8 (per-channel, for generate/eval) or bf16");
  sub->add_option("--checkpoint", o->checkpoint, "model folder (float32, bfloat16 or int8)")
      ->required();
  sub->add_option("--out", o->out, "folder to write")->required();
  sub->add_option("--dtype", o->dtype, "int8, bf16 or fp32")->capture_default_str();
  sub->callback([o] { run_quantize(*o); });
}
