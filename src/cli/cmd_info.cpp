// moe info CONFIG [--batch B] [--seq-len T]: what a model costs before it is trained.
//
// CONFIG is a TOML run config (batch and seq_len come from its [train]) or an HF-style
// config.json (model_type moe_cpp or deepseek_v3), including the paper-scale ones in
// configs/models/. Prints total and active parameters (main model as published, then with the
// multi-token-prediction modules, and the exact integers), FLOPs per token and memory per
// component in binary units (KiB, MiB, GiB, TiB). Counts and FLOPs are model/flops.h's for
// every config (GQA or MLA, with or without MTP); the planner uses the same functions.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/format.h"
#include "model/config.h"
#include "model/flops.h"
#include "plan/cost.h"
#include "plan/model_spec.h"
#include "train/run_config.h"

namespace {

using namespace moe;

struct InfoOptions {
  std::string config;   // "configs/small.toml" or "configs/models/deepseek_v3.json"
  int64_t batch = 0;    // sequences per micro-batch (0: [train] batch of a TOML, else none)
  int64_t seq_len = 0;  // tokens per sequence (0: [train] seq_len, else max_position_embeddings)
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Floats this engine keeps per token for backward (model.cpp's Activations, fp32): per layer the
// residual inputs, norms, q|k|v, attention probabilities (H*T per token), attention output, and
// the dense FFN or the MoE layer's routed copies (K rows of D, 2Fe, Fe, D), router logits and
// scores, shared expert; then the final norm, the logits and the per-token losses.
double engine_act_floats_per_token(const ModelConfig& c, int64_t T) {
  const double D = double(c.hidden_size), H = double(c.num_attention_heads);
  const double Dh = double(c.head_dim), A = H * Dh, Qd = double(c.qkv_dim());
  const double K = double(c.num_experts_per_tok), E = double(c.n_routed_experts);
  const double Fe = double(c.moe_intermediate_size), SF = double(c.shared_width());
  const double F = double(c.intermediate_size);
  double total = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double layer = 2 * D /* residual in, mid */ + 2 * D + 2 /* ln1, ln2, rstd */ + Qd +
                   H * double(T) /* softmax probabilities */ + A;
    if (c.is_moe_layer(l)) {
      layer += 2 * E /* logits, scores */ + 3 * K /* top-k ids, weights, slot rows */ +
               K * (D + 2 * Fe + Fe + D) + 3 * SF;
    } else {
      layer += 3 * F;
    }
    total += layer;
  }
  return total + D /* final residual */ + D + 1 /* final norm */ + double(c.vocab_size) + 1 + 2;
}

int run_info(const InfoOptions& o) {
  plan::PlanModel pm;
  int64_t batch = o.batch, seq = o.seq_len, accum = 1;
  std::string origin = o.config;
  if (ends_with(o.config, ".toml")) {
    const RunConfig rc = load_run_config(o.config);
    pm.cfg = rc.model;
    origin = rc.model_origin;
    if (batch == 0) batch = rc.train.batch;
    if (seq == 0) seq = rc.train.seq_len;
    accum = rc.train.accum;
  } else {
    MOE_CHECK(ends_with(o.config, ".json"), "info", "'", o.config,
              "' is neither a .toml run config nor a .json model config");
    pm = plan::load_plan_model(o.config);
  }
  const ModelConfig& c = pm.cfg;
  if (seq == 0) seq = c.max_position_embeddings;
  MOE_CHECK(seq >= 1 && batch >= 0, "info", "--seq-len must be >= 1 and --batch >= 0");
  const int64_t n_mtp = c.num_nextn_predict_layers;
  const bool mtp = n_mtp > 0;
  const bool planner = c.is_mla() || mtp;  // activations: the planner's model, not the engine's

  // Main model (published totals leave the MTP modules out), then with them.
  ModelConfig main_cfg = c;
  main_cfg.num_nextn_predict_layers = 0;
  const ParamCounts p = count_params(main_cfg), with = count_params(c);
  const int64_t total = p.total, active = p.active, experts = p.routed_experts;
  const int64_t embed = p.embedding;
  const double train_flops = train_flops_per_token(c, seq);
  const double fwd_flops = forward_flops_per_token(c, seq, /*causal=*/false).total();

  const int64_t L = c.num_hidden_layers, Lmoe = L - std::min(L, c.first_k_dense_replace);
  std::printf("%s%s%s\n", origin.c_str(), pm.x.name.empty() ? "" : ": ", pm.x.name.c_str());
  std::printf("  %lld layers (%lld dense, %lld MoE), hidden %lld, %lld heads", (long long)L,
              (long long)(L - Lmoe), (long long)Lmoe, (long long)c.hidden_size,
              (long long)c.num_attention_heads);
  if (c.is_mla())
    std::printf(" (MLA: kv_lora_rank %lld, q_lora_rank %lld, qk %lld + %lld rope, v %lld)",
                (long long)c.kv_lora_rank, (long long)c.q_lora_rank, (long long)c.qk_nope_head_dim,
                (long long)c.qk_rope_head_dim, (long long)c.v_head_dim);
  else
    std::printf(" x %lld (%lld key/value heads)", (long long)c.head_dim,
                (long long)c.num_key_value_heads);
  std::printf(", vocab %lld\n", (long long)c.vocab_size);
  std::printf("  experts: %lld routed (top-%lld) + %lld shared, width %lld; dense FFN width %lld\n",
              (long long)c.n_routed_experts, (long long)c.num_experts_per_tok,
              (long long)c.n_shared_experts, (long long)c.moe_intermediate_size,
              (long long)c.intermediate_size);

  std::printf("parameters: %s total, %s active per token (%.1f%%)\n",
              human_count(double(total)).c_str(), human_count(double(active)).c_str(),
              100.0 * double(active) / double(total));
  std::printf("  routed experts %s, embedding + lm_head %s, the rest %s\n",
              human_count(double(experts)).c_str(), human_count(double(embed)).c_str(),
              human_count(double(total - experts - embed)).c_str());
  if (mtp)
    std::printf("  + %s in %lld multi-token-prediction module(s): %s total, %s active with them\n",
                human_count(double(with.total - total)).c_str(), (long long)n_mtp,
                human_count(double(with.total)).c_str(), human_count(double(with.active)).c_str());
  std::printf("  exact: %lld total, %lld active", (long long)total, (long long)active);
  if (mtp)
    std::printf("; with MTP %lld total, %lld active", (long long)with.total,
                (long long)with.active);
  std::printf("\n");

  std::printf("FLOPs per token at seq %lld: forward %s, train %s (forward + backward = 3x%s)\n",
              (long long)seq, human_flops(fwd_flops).c_str(), human_flops(train_flops).c_str(),
              mtp ? "; MTP modules included" : "");
  std::printf(
      "  counted as model/flops.h does (PaLM: 6 x active matmul weights + attention "
      "scores and values, 12 L H Dh T for GQA, without the causal saving)\n");

  const double P = double(with.total);  // what training holds: MTP modules included
  std::printf("memory (fp32 weights, gradients and AdamW moments, as this engine trains):\n");
  std::printf("  params        %s  (bf16 copy: %s)\n", human_bytes(4 * P).c_str(),
              human_bytes(2 * P).c_str());
  std::printf("  grads         %s\n", human_bytes(4 * P).c_str());
  std::printf("  Adam moments  %s  (exp_avg + exp_avg_sq)\n", human_bytes(8 * P).c_str());
  std::printf("  together      %s  (16 bytes per parameter)\n", human_bytes(16 * P).c_str());
  double act_token = 0;
  std::string act_how;
  if (planner) {
    for (int64_t l = 0; l < L + n_mtp; ++l)  // MTP blocks are MoE layers L + k
      act_token +=
          plan::act_bytes_per_token_layer(pm, c.is_moe_layer(l), plan::Recompute::kNone, 2.0);
    act_token += 4.0 * double(c.vocab_size) * double(1 + n_mtp);  // fp32 logits, every depth
    act_how = "bf16, no recompute, flash attention: the planner's model";
  } else {
    act_token = 4.0 * engine_act_floats_per_token(c, seq);
    act_how = "fp32 as this engine saves them, attention probabilities included";
  }
  std::printf("  activations   %s per token at seq %lld (%s)\n", human_bytes(act_token).c_str(),
              (long long)seq, act_how.c_str());
  if (batch > 0)
    std::printf(
        "                %s per micro-batch of %lld x %lld tokens%s\n",
        human_bytes(act_token * double(batch * seq)).c_str(), (long long)batch, (long long)seq,
        accum > 1 ? (" (" + std::to_string(accum) + " micro-batches per step, one live)").c_str()
                  : "");
  double kv = 0;  // bytes per token
  std::string kv_how;
  if (c.is_mla()) {
    kv = 2.0 * double(L) * double(c.kv_lora_rank + c.qk_rope_head_dim);
    kv_how = "bf16 MLA latents: " + std::to_string(L) + " layers x (" +
             std::to_string(c.kv_lora_rank) + " + " + std::to_string(c.qk_rope_head_dim) + ")";
  } else {
    kv = 4.0 * 2.0 * double(L) * double(c.num_key_value_heads * c.head_dim);
    kv_how = "fp32 K and V: " + std::to_string(L) + " layers x 2 x " +
             std::to_string(c.num_key_value_heads) + " x " + std::to_string(c.head_dim);
  }
  std::printf("  KV cache      %s per token (%s), %s for %lld tokens\n", human_bytes(kv).c_str(),
              kv_how.c_str(), human_bytes(kv * double(c.max_position_embeddings)).c_str(),
              (long long)c.max_position_embeddings);
  return 0;
}

}  // namespace

void add_info_commands(CLI::App& app) {
  auto o = std::make_shared<InfoOptions>();
  auto* sub = app.add_subcommand(
      "info", "parameters, FLOPs per token and memory of a run config (.toml) or config.json");
  sub->add_option("config", o->config, "run config (.toml) or model config (.json)")->required();
  sub->add_option("--batch", o->batch, "sequences per micro-batch (default: [train] batch)");
  sub->add_option("--seq-len", o->seq_len,
                  "tokens per sequence (default: [train] seq_len or max_position_embeddings)");
  sub->callback([o] { run_info(*o); });
}
