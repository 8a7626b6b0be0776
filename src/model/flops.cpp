#include "model/flops.h"

namespace moe {

int64_t attn_matmul_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  if (!c.is_mla()) return D * c.qkv_dim() + H * c.head_dim * D;
  const int64_t rq = c.q_lora_rank, rkv = c.kv_lora_rank, dqk = c.qk_head_dim();
  const int64_t q = rq > 0 ? rq * D + H * dqk * rq : H * dqk * D;
  const int64_t kv = (rkv + c.qk_rope_head_dim) * D + H * (c.qk_nope_head_dim + c.v_head_dim) * rkv;
  return q + kv + D * H * c.v_head_dim;
}

int64_t attn_params(const ModelConfig& c) {
  return attn_matmul_params(c) + (c.is_mla() ? c.q_lora_rank + c.kv_lora_rank : 0);
}

int64_t dense_ffn_params(const ModelConfig& c) { return 3 * c.hidden_size * c.intermediate_size; }
int64_t expert_params(const ModelConfig& c) { return 3 * c.hidden_size * c.moe_intermediate_size; }
int64_t shared_params(const ModelConfig& c) { return 3 * c.hidden_size * c.shared_width(); }
int64_t router_params(const ModelConfig& c) { return c.n_routed_experts * c.hidden_size; }
int64_t mtp_extra_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size;
  return 2 * D * D + 3 * D;  // eh_proj + enorm, hnorm, shared_head.norm
}

ParamCounts count_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const int64_t L = c.num_hidden_layers, M = c.num_nextn_predict_layers;
  const int64_t attn = attn_params(c) + D;            // + input_layernorm
  const int64_t dense_ffn = dense_ffn_params(c) + D;  // + post_attention_layernorm
  const int64_t moe_common = router_params(c) + shared_params(c) + D;
  const int64_t expert = expert_params(c);
  ParamCounts p;
  p.embedding = V * D * (c.tie_word_embeddings ? 1 : 2);
  p.total = p.embedding + D;  // final norm
  p.active = p.total;
  for (int64_t l = 0; l < L + M; ++l) {  // main layers, then the MTP blocks (always MoE)
    p.total += attn, p.active += attn;
    if (c.is_moe_layer(l)) {
      p.total += moe_common + c.n_routed_experts * expert;
      p.active += moe_common + c.num_experts_per_tok * expert;
      p.routed_experts += c.n_routed_experts * expert;
    } else {
      p.total += dense_ffn, p.active += dense_ffn;
    }
  }
  p.total += M * mtp_extra_params(c);
  p.active += M * mtp_extra_params(c);
  // An embedding row is looked up, not multiplied: only lm_head counts as active.
  p.active -= c.tie_word_embeddings ? 0 : V * D;
  return p;
}

double attn_core_flops_per_token_layer(const ModelConfig& c, int64_t seq, bool causal) {
  const double full = 2.0 * static_cast<double>(seq) * static_cast<double>(c.num_attention_heads) *
                      static_cast<double>(c.qk_head_dim() + c.v_dim());
  return causal ? 0.5 * full : full;
}

TokenFlops forward_flops_per_token(const ModelConfig& c, int64_t seq, bool causal) {
  const double D = static_cast<double>(c.hidden_size), V = static_cast<double>(c.vocab_size);
  const int64_t L = c.num_hidden_layers, M = c.num_nextn_predict_layers;
  TokenFlops f;
  for (int64_t l = 0; l < L + M; ++l) {
    f.dense_gemm += 2.0 * static_cast<double>(attn_matmul_params(c));
    f.attn_core += attn_core_flops_per_token_layer(c, seq, causal);
    if (c.is_moe_layer(l)) {
      f.dense_gemm += 2.0 * static_cast<double>(shared_params(c));
      f.expert_gemm += 2.0 * static_cast<double>(c.num_experts_per_tok * expert_params(c));
      f.head_gemm += 2.0 * static_cast<double>(router_params(c));
    } else {
      f.dense_gemm += 2.0 * static_cast<double>(dense_ffn_params(c));
    }
  }
  f.dense_gemm += 2.0 * static_cast<double>(M) * 2.0 * D * D;  // eh_proj
  f.head_gemm += 2.0 * static_cast<double>(1 + M) * V * D;     // main head + one per module
  return f;
}

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  return 3.0 * forward_flops_per_token(c, seq_len, /*causal=*/false).total();
}

}  // namespace moe
