// Routing statistics for the log: summed over the steps of a log interval and over the job's
// ranks, then written as one "moe" record per MoE layer (metrics.h).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "train/metrics.h"

namespace moe {

class Parallel;

// Adds per-layer routing statistics (same layers in the same order) into acc.
void accumulate(std::vector<MoeLayerStats>& acc, const std::vector<MoeLayerStats>& s);

// Routing statistics of the log interval summed over the job (collective).
void reduce_window(Parallel& par, std::vector<MoeLayerStats>& window);

// Per MoE layer over the log interval: load balance (max/mean, min/mean of the per-expert
// token counts), the router's mean score entropy, capacity drops and the balancing bias.
void write_moe_records(MetricsLog& log, const Model& model, int64_t step,
                       const std::vector<MoeLayerStats>& window, int64_t ep);

}  // namespace moe
