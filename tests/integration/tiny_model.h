// The small models the system tests build: one place for their shape, so a test that trains,
// resumes or compares against PyTorch states only what it changes.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moe::testing {

// 64 wide, 2 layers, 4 query heads over 2 key-value heads of 16, FFNs of 96 (dense) and 32
// (each expert), 32 positions; the MoE fields keep their defaults.
inline ModelConfig tiny_dims() {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.moe_intermediate_size = 32;
  c.max_position_embeddings = 32;
  return c;
}

// tiny_dims() as a DeepSeek-style MoE that exercises every part of the training state: the
// first layer dense, then 8 routed experts (top-2, sigmoid scores, normalized) beside one
// shared expert, balancing biases that move and the sequence-level auxiliary loss.
inline ModelConfig tiny_moe(int64_t vocab = 256, int64_t max_positions = 32) {
  ModelConfig c = tiny_dims();
  c.vocab_size = vocab;
  c.max_position_embeddings = max_positions;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.bias_update_rate = 1e-3;  // the biases must train (and resume) too
  c.seq_aux_alpha = 1e-3;
  return c;
}

}  // namespace moe::testing
