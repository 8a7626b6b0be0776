// Autoregressive generation with a KV cache, temperature and top-k sampling.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace moe {

class Int8Weights;  // model/quantized.h

struct GenerateOptions {
  int64_t max_new_tokens = 200;
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 40;        // 0 = whole vocabulary
  uint64_t seed = 0;
  // The model's int8 weights (Int8Weights::quantize or load_quantized): the linear layers run
  // as int8 kernels; null = all fp32. Must outlive the call.
  const Int8Weights* int8 = nullptr;
};

// Returns the new tokens; on_token (if set) sees each one as it is sampled. When the context
// reaches max_position_embeddings, the cache is rebuilt from the last half of it.
std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

// Logits (V) of the next token after `context` computed with the KV-cache path (for tests:
// must match the full forward's last row), with int8 weights if int8 is given.
std::vector<float> next_token_logits(const Model& model, const std::vector<int32_t>& context,
                                     const Int8Weights* int8 = nullptr);

// Sum over t in [0, n-1) of the cross-entropy (nats) of window[t+1] given window[0..t], scored
// one token at a time by the KV-cache decoder (the windows `moe eval` scores with the full
// forward), with int8 weights if int8 is given. 2 <= n <= max_position_embeddings + 1.
double window_loss_sum(const Model& model, const std::vector<int32_t>& window,
                       const Int8Weights* int8 = nullptr);

}  // namespace moe
