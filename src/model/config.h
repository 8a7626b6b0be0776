// Model configuration: the HF-style config.json keys of DESIGN.md section 3.
//
// Two model types load: "moe_cpp" (ours) and "deepseek_v3" (Hugging Face DeepseekV3 config.json
// keys, same names and semantics). Rules that decide the attention kind and MTP:
//   - attention = "gqa" (default for moe_cpp) or "mla". model_type "deepseek_v3" implies "mla"
//     (DeepSeek-V3 has no GQA form; HF builds MLA unconditionally), so its config.json needs no
//     "attention" key and "attention": "gqa" is an error. For moe_cpp, MLA is never implied:
//     kv_lora_rank etc. without "attention": "mla" are an error naming the fix.
//   - MLA sizes: q_lora_rank (null = direct q_proj), kv_lora_rank, qk_nope_head_dim,
//     qk_rope_head_dim (even), v_head_dim. head_dim is qk_rope_head_dim (HF DeepseekV3Config
//     sets head_dim = qk_rope_head_dim) and num_key_value_heads is num_attention_heads (each head
//     has its own k/v out of kv_b_proj); given and different, they are errors.
//   - Softmax scale 1/sqrt(qk_nope_head_dim + qk_rope_head_dim). rope_scaling (YaRN, whose mscale
//     would multiply it) is rejected unless null; DeepSeek-V3 pre-trains without it.
//   - RoPE on the rope part of q and on k_pe in the HF rotate_half convention on the dims as the
//     projections produce them (HF rope_interleave = false). DeepSeek's released weights keep
//     the rope dims interleaved (HF default rope_interleave = true): the two are the same model
//     up to a permutation of those rows; "rope_interleave": true is rejected.
//   - num_nextn_predict_layers = D multi-token-prediction modules (DeepSeek-V3 sec. 2.2), module
//     k in [0, D) stored as layer index num_hidden_layers + k; loss weight mtp_loss_weight.
// config.cpp lists the HF-only keys a DeepseekV3 config.json may carry and what each may be.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

struct ModelConfig {
  std::string model_type = "moe_cpp";  // must be "moe_cpp"
  int64_t vocab_size = 256;            // 256 for the byte tokenizer
  int64_t hidden_size = 128;           // D
  int64_t num_hidden_layers = 4;       // L
  int64_t num_attention_heads = 4;     // H
  int64_t num_key_value_heads = 2;     // Hkv, divides H
  int64_t head_dim = 32;               // Dh, even (RoPE); MLA: = qk_rope_head_dim
  // Attention kind: "gqa" (q/k/v/o_proj) or "mla" (DeepSeek-V2/V3 multi-head latent attention).
  std::string attention = "gqa";
  // MLA sizes (0 = null in config.json; all but q_lora_rank required with attention = "mla").
  int64_t q_lora_rank = 0;              // rq, e.g. 1536; 0 = null: q_proj [H*(dn+dr), D]
  int64_t kv_lora_rank = 0;             // rkv, e.g. 512
  int64_t qk_nope_head_dim = 0;         // dn, e.g. 128
  int64_t qk_rope_head_dim = 0;         // dr, e.g. 64, even
  int64_t v_head_dim = 0;               // dv, e.g. 128
  int64_t intermediate_size = 384;      // F, dense FFN width
  int64_t moe_intermediate_size = 128;  // Fe, one routed expert's width
  int64_t n_routed_experts = 8;         // E
  int64_t n_shared_experts = 1;         // S, shared width S*Fe (0 = none)
  int64_t num_experts_per_tok = 2;      // K
  // Group-limited routing (DeepSeek-V3 "node-limited"): the E experts form n_group equal
  // consecutive groups and each token takes its K only from its best topk_group groups.
  int64_t n_group = 1;                   // e.g. 8; divides E; 1 = no group limit
  int64_t topk_group = 1;                // e.g. 4; in [1, n_group], K <= topk_group * E/n_group
  int64_t first_k_dense_replace = 1;     // layers [0, this) use the dense FFN
  std::string scoring_func = "softmax";  // "softmax" or "sigmoid"
  bool norm_topk_prob = false;           // renormalize the K gate weights to sum to 1
  double routed_scaling_factor = 1.0;    // e.g. 2.5 (DeepSeek-V3)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 256;  // also the default training sequence length
  bool tie_word_embeddings = false;
  double aux_loss_alpha = 0.0;    // batch-level balance loss weight, e.g. 0.01
  double seq_aux_alpha = 0.0;     // sequence-level balance loss weight, e.g. 1e-4
  double z_loss_coef = 0.0;       // router z-loss weight, e.g. 1e-3
  double bias_update_rate = 0.0;  // auxiliary-loss-free bias step, e.g. 1e-3 (0 = off)
  double capacity_factor = 0.0;   // 0 = dropless, e.g. 1.25
  double initializer_range = 0.02;
  // Multi-token prediction (DeepSeek-V3 sec. 2.2): D sequential modules sharing the embedding
  // and the output head; loss = CE + mtp_loss_weight / D * sum over modules of their CE.
  int64_t num_nextn_predict_layers = 0;  // D, e.g. 1 (0 = no MTP)
  double mtp_loss_weight = 0.3;          // lambda; DeepSeek-V3: 0.3, then 0.1 for the last 4.8T

  // MoE or dense FFN at layer index `layer`; MTP module k is layer index L + k, always MoE.
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  bool is_mla() const { return attention == "mla"; }
  // Uses the MLA or MTP parts of the engine (model_attention.cpp, model_mtp.cpp).
  bool needs_mla_engine() const { return is_mla() || num_nextn_predict_layers > 0; }
  // GQA: q|k|v rows of one token, (H + 2 Hkv) * Dh.
  int64_t qkv_dim() const { return (num_attention_heads + 2 * num_key_value_heads) * head_dim; }
  // Width of one head's q.k product and of its value: MLA dn + dr and dv; GQA Dh and Dh.
  int64_t qk_head_dim() const { return is_mla() ? qk_nope_head_dim + qk_rope_head_dim : head_dim; }
  int64_t v_dim() const { return is_mla() ? v_head_dim : head_dim; }
  // Attention softmax scale 1/sqrt(qk_head_dim()) (no YaRN mscale: rope_scaling is rejected).
  double attn_softmax_scale() const;
  int64_t shared_width() const { return n_shared_experts * moe_intermediate_size; }

  // Checks every field; throws moe::Error naming the key, its value and the allowed range.
  void validate() const;

 private:
  void validate_mla() const;
};

// config.json <-> ModelConfig. Unknown keys and wrong types are errors naming the key and file.
ModelConfig load_config(const std::string& path);
void save_config(const ModelConfig& cfg, const std::string& path);
// Same, from/to a JSON string (`origin` names the source in error messages).
ModelConfig parse_config(const std::string& json_text, const std::string& origin);
std::string config_to_json(const ModelConfig& cfg);

}  // namespace moe
