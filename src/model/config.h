// Model configuration: the HF-style config.json keys of DESIGN.md section 3.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

struct ModelConfig {
  std::string model_type = "moe_cpp";   // must be "moe_cpp"
  int64_t vocab_size = 256;             // 256 for the byte tokenizer
  int64_t hidden_size = 128;            // D
  int64_t num_hidden_layers = 4;        // L
  int64_t num_attention_heads = 4;      // H
  int64_t num_key_value_heads = 2;      // Hkv, divides H
  int64_t head_dim = 32;                // Dh, even (RoPE)
  int64_t intermediate_size = 384;      // F, dense FFN width
  int64_t moe_intermediate_size = 128;  // Fe, one routed expert's width
  int64_t n_routed_experts = 8;         // E
  int64_t n_shared_experts = 1;         // S, shared width S*Fe (0 = none)
  int64_t num_experts_per_tok = 2;      // K
  // Group-limited routing (DeepSeek-V3 "node-limited"): the E experts form n_group equal
  // consecutive groups and each token takes its K only from its best topk_group groups.
  int64_t n_group = 1;                  // e.g. 8; divides E; 1 = no group limit
  int64_t topk_group = 1;               // e.g. 4; in [1, n_group], K <= topk_group * E/n_group
  int64_t first_k_dense_replace = 1;    // layers [0, this) use the dense FFN
  std::string scoring_func = "softmax"; // "softmax" or "sigmoid"
  bool norm_topk_prob = false;          // renormalize the K gate weights to sum to 1
  double routed_scaling_factor = 1.0;   // e.g. 2.5 (DeepSeek-V3)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 256;  // also the default training sequence length
  bool tie_word_embeddings = false;
  double aux_loss_alpha = 0.0;          // batch-level balance loss weight, e.g. 0.01
  double seq_aux_alpha = 0.0;           // sequence-level balance loss weight, e.g. 1e-4
  double z_loss_coef = 0.0;             // router z-loss weight, e.g. 1e-3
  double bias_update_rate = 0.0;        // auxiliary-loss-free bias step, e.g. 1e-3 (0 = off)
  double capacity_factor = 0.0;         // 0 = dropless, e.g. 1.25
  double initializer_range = 0.02;

  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  int64_t qkv_dim() const { return (num_attention_heads + 2 * num_key_value_heads) * head_dim; }
  int64_t shared_width() const { return n_shared_experts * moe_intermediate_size; }

  // Checks every field; throws moe::Error naming the key, its value and the allowed range.
  void validate() const;
};

// config.json <-> ModelConfig. Unknown keys and wrong types are errors naming the key and file.
ModelConfig load_config(const std::string& path);
void save_config(const ModelConfig& cfg, const std::string& path);
// Same, from/to a JSON string (`origin` names the source in error messages).
ModelConfig parse_config(const std::string& json_text, const std::string& origin);
std::string config_to_json(const ModelConfig& cfg);

}  // namespace moe
