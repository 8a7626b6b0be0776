#include "model/presets.h"

#include <algorithm>

namespace moe {

ModelConfig bench_moe_config(int64_t seq) {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 512;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.intermediate_size = 1536;
  c.moe_intermediate_size = 512;
  c.n_routed_experts = 16;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.bias_update_rate = 1e-3;
  c.max_position_embeddings = std::max<int64_t>(512, seq);
  return c;
}

}  // namespace moe
