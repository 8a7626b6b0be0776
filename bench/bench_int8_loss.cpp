// Held-out loss of a checkpoint in fp32 and in int8, scored by the KV-cache decoder (the path
// `moe generate --dtype int8` runs), until `moe eval --dtype int8` has Model::forward in int8.
//
//   build/bench/bench_int8_loss --checkpoint runs/small --data ../shared/data/tinyshakespeare.txt
//       [--val-fraction 0.1] [--tokens 16384] [--seq-len T]
//
// The text is tokenized with the checkpoint's tokenizer; the last val_fraction of it is cut into
// consecutive windows of T+1 tokens (T = max_position_embeddings by default), as `moe eval`
// scores them. Prints both mean cross-entropies, their relative difference, and the fp32 loss
// of the full forward (Model::forward) over the same windows as a cross-check of the decoder.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizers.h"
#include "infer/generate.h"
#include "model/quantized.h"
#include "model/model.h"
#include "train/trainer.h"

namespace {

using namespace moe;

struct Args {
  std::string checkpoint, data;
  double val_fraction = 0.1;
  int64_t tokens = 16384;
  int64_t seq_len = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    MOE_CHECK(i + 1 < argc, "bench_int8_loss", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--checkpoint")
      a.checkpoint = v;
    else if (k == "--data")
      a.data = v;
    else if (k == "--val-fraction")
      a.val_fraction = std::atof(v.c_str());
    else if (k == "--tokens")
      a.tokens = std::atoll(v.c_str());
    else if (k == "--seq-len")
      a.seq_len = std::atoll(v.c_str());
    else
      MOE_FAIL("bench_int8_loss", "unknown option ", k,
               " (known: --checkpoint --data --val-fraction --tokens --seq-len)");
  }
  MOE_CHECK(!a.checkpoint.empty() && !a.data.empty(), "bench_int8_loss",
            "usage: bench_int8_loss --checkpoint DIR --data FILE [--val-fraction 0.1] "
            "[--tokens 16384] [--seq-len T]");
  return a;
}

int run(const Args& a) {
  ModelConfig cfg;
  std::vector<float> params;
  Int8Weights int8;
  const CheckpointInfo info = load_quantized(a.checkpoint, &cfg, &params, &int8, true);
  Model model(cfg);
  model.params() = params;
  const auto tok = make_tokenizer(model_tokenizer_spec(a.checkpoint));
  std::ifstream f(a.data, std::ios::binary);
  MOE_CHECK(f.good(), "bench_int8_loss", "cannot read ", a.data);
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::vector<int32_t> all = tok->encode(ss.str());
  const size_t cut = size_t(double(all.size()) * (1.0 - a.val_fraction));
  const std::vector<int32_t> val(all.begin() + int64_t(cut), all.end());
  const int64_t T = a.seq_len > 0 ? a.seq_len : cfg.max_position_embeddings;
  const int64_t windows =
      std::min<int64_t>((int64_t(val.size()) - 1) / T, std::max<int64_t>(1, a.tokens / T));
  MOE_CHECK(windows >= 1, "bench_int8_loss", "the held-out part has ", val.size(),
            " tokens, fewer than one window of ", T + 1);

  using Clock = std::chrono::steady_clock;
  double s32 = 0, s8 = 0, t32 = 0, t8 = 0;
  for (int64_t w = 0; w < windows; ++w) {
    const std::vector<int32_t> win(val.begin() + w * T, val.begin() + w * T + T + 1);
    auto t0 = Clock::now();
    s32 += window_loss_sum(model, win);
    auto t1 = Clock::now();
    s8 += window_loss_sum(model, win, &int8);
    auto t2 = Clock::now();
    t32 += std::chrono::duration<double>(t1 - t0).count();
    t8 += std::chrono::duration<double>(t2 - t1).count();
  }
  const double n = double(windows * T);
  const double ce32 = s32 / n, ce8 = s8 / n;
  const double fwd = evaluate(model, val, T, 8, windows * T);
  std::printf("checkpoint %s (%s), held-out %.0f%% of %s: %lld windows of %lld = %.0f tokens\n",
              a.checkpoint.c_str(), weight_format_name(info.format), 100 * a.val_fraction,
              a.data.c_str(), static_cast<long long>(windows), static_cast<long long>(T), n);
  std::printf("decoder loss: fp32 %.5f, int8 %.5f nats/token: int8/fp32 - 1 = %+.3f%%\n", ce32, ce8,
              100 * (ce8 / ce32 - 1));
  std::printf("full forward fp32 (Model::forward): %.5f (decoder - forward: %.2g)\n", fwd,
              ce32 - fwd);
  std::printf("decoding speed while scoring: fp32 %.0f tokens/s, int8 %.0f tokens/s\n", n / t32,
              n / t8);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_int8_loss: error: %s\n", e.what());
    return 1;
  }
}
