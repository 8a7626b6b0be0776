// Model presets that code needs without a config file.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moe {

// bench-moe (issue #2's benchmark; configs/bench-moe.toml holds the same model): vocab 256,
// hidden 512, 6 layers, 8 heads x 64, first layer dense (intermediate 1536), then 16 routed
// experts of width 512, top-2 sigmoid, 1 shared expert, auxiliary-loss-free bias at 1e-3.
// max_position_embeddings is at least `seq`.
ModelConfig bench_moe_config(int64_t seq = 512);

}  // namespace moe
