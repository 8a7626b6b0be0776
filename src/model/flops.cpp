#include "model/flops.h"

namespace moe {

ParamCounts count_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size, L = c.num_hidden_layers, V = c.vocab_size;
  const int64_t attn = D * c.qkv_dim() + c.num_attention_heads * c.head_dim * D + D;  // + norm
  const int64_t dense_ffn = 3 * D * c.intermediate_size + D;                          // + norm
  const int64_t expert = 3 * D * c.moe_intermediate_size;
  const int64_t moe_common = c.n_routed_experts * D + c.n_shared_experts * expert + D;  // router
  ParamCounts p;
  p.embedding = V * D * (c.tie_word_embeddings ? 1 : 2);
  p.total = p.embedding + D;  // final norm
  p.active = p.total;
  for (int64_t l = 0; l < L; ++l) {
    p.total += attn, p.active += attn;
    if (c.is_moe_layer(l)) {
      p.total += moe_common + c.n_routed_experts * expert;
      p.active += moe_common + c.num_experts_per_tok * expert;
      p.routed_experts += c.n_routed_experts * expert;
    } else {
      p.total += dense_ffn, p.active += dense_ffn;
    }
  }
  // An embedding row is looked up, not multiplied: only lm_head counts as active.
  p.active -= c.tie_word_embeddings ? 0 : V * D;
  return p;
}

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const int64_t D = c.hidden_size, L = c.num_hidden_layers;
  double matmul = double(c.vocab_size) * D;  // lm_head
  for (int64_t l = 0; l < L; ++l) {
    matmul += double(D) * c.qkv_dim() + double(c.num_attention_heads) * c.head_dim * D;
    if (c.is_moe_layer(l)) {
      matmul += double(c.n_routed_experts) * D +
                double(c.num_experts_per_tok + c.n_shared_experts) * 3.0 * D *
                    c.moe_intermediate_size;
    } else {
      matmul += 3.0 * D * c.intermediate_size;
    }
  }
  return 6.0 * matmul + 12.0 * double(L) * c.num_attention_heads * c.head_dim * double(seq_len);
}

}  // namespace moe
