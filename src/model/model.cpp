// The training story of one micro-batch: forward is a straight list of kernel calls, backward is
// the same list reversed with d-prefixed names (DESIGN.md section 6). Shapes: N = B*T tokens,
// D hidden, Qd = (H + 2*Hkv)*Dh fused q|k|v width, A = H*Dh attention width.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/kernels.h"
#include "model/quantized.h"

namespace moe {

// Saved activations of one layer.
struct LayerActs {
  std::vector<float> ln1, rstd1;  // (N, D), (N)
  std::vector<float> qkv;         // (N, Qd) after RoPE
  std::vector<float> att;         // (B, H, T, T) softmax probabilities
  std::vector<float> atto;        // (N, A) attention output before o_proj
  std::vector<float> ln2, rstd2;  // (N, D), (N)
  std::vector<float> gu, h;       // dense FFN: (N, 2F), (N, F)
  MoeCache moe;                   // MoE FFN
};

struct Activations {
  int64_t B = 0, T = 0;
  std::vector<float> res;     // (2L+1, N, D): residual stream before each attention / FFN, final
  std::vector<LayerActs> layers;
  std::vector<float> lnf, rstdf;  // (N, D), (N)
  std::vector<float> logits;      // (N, V); dlogits in place after backward
  std::vector<float> losses;      // (N)
  std::vector<int32_t> inputs, targets;  // (N)
  // backward scratch; the dense FFN's dh and dgu live in moe_scratch (one layer at a time)
  std::vector<float> tmp, dres, dln, datto, dqkv, att_scratch;
  MoeScratch moe_scratch;
};

namespace {
template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}
// Sum over n of the entropy of scores[n, :] / sum_e scores[n, e] (nats), in double.
double router_entropy_sum(const float* scores, int64_t N, int64_t E) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* s = scores + n * E;
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += double(s[e]);
    if (!(sum > 0)) continue;
    double h = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double p = double(s[e]) / sum;
      if (p > 0) h -= p * std::log(p);
    }
    total += h;
  }
  return total;
}
// The linear weights of each part, for Gemms::cast_weights: index 0 the embedding (none), 1 + l
// layer l, L + 1 the head. Every *_proj.weight and lm_head; the router (mlp.gate) stays f32.
std::vector<std::vector<WeightMatrix>> weight_matrices(const ParamLayout& layout, int64_t L) {
  std::vector<std::vector<WeightMatrix>> parts(size_t(L + 2));
  bool head = false;
  for (const ParamSpec& s : layout.specs) {
    if (s.shape.size() != 2) continue;
    if (s.name == "lm_head.weight") {
      parts[size_t(L + 1)].push_back({s.offset, s.shape[0], s.shape[1], true});
      head = true;
    } else if (is_linear_weight(s) && s.layer >= 0) {
      parts[size_t(s.layer + 1)].push_back({s.offset, s.shape[0], s.shape[1], false});
    }
  }
  if (!head) {  // tied: the head is the embedding table [V, D]
    const ParamSpec* e = layout.find("model.embed_tokens.weight");
    MOE_CHECK(e && e->shape.size() == 2, "model", "no embedding table in the layout");
    parts[size_t(L + 1)].push_back({e->offset, e->shape[0], e->shape[1], true});
  }
  return parts;
}

// out = a + b (the residual connection)
void add(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
}  // namespace

Model::Model(const ModelConfig& cfg, const LayoutOptions& parts)
    : cfg_(cfg), acts_(std::make_unique<Activations>()) {
  cfg_.validate();
  MOE_CHECK(!cfg_.needs_mla_engine(), "model",
            cfg_.is_mla() ? "attention = \"mla\" (Multi-head Latent Attention)"
                          : "num_nextn_predict_layers > 0 (multi-token prediction)",
            " is not trained by this engine yet (issue 18): `moe info` and `moe plan` count "
            "such configs; to train, use attention = \"gqa\" and num_nextn_predict_layers = 0");
  layout_ = make_layout(cfg_, parts);
  part_weights_ = weight_matrices(layout_, cfg_.num_hidden_layers);
  params_.assign(layout_.total_numel, 0.0f);
  grads_.assign(layout_.total_numel, 0.0f);
  load_.resize(cfg_.num_hidden_layers);
  reset_load();
  const int64_t half = cfg_.head_dim / 2;
  rope_cos_.resize(cfg_.max_position_embeddings * half);
  rope_sin_.resize(cfg_.max_position_embeddings * half);
  cpu::rope_tables(rope_cos_.data(), rope_sin_.data(), cfg_.max_position_embeddings,
                   cfg_.head_dim, cfg_.rope_theta);
}

Model::~Model() = default;

void Model::init_weights(uint64_t seed) {
  for (const auto& s : layout_.specs) {
    float* p = params_.data() + s.offset;
    if (s.init_one) {
      std::fill(p, p + s.numel, 1.0f);
    } else if (s.init_std == 0.0) {
      std::fill(p, p + s.numel, 0.0f);
    } else {
      const uint64_t stream = stream_id(s.name.c_str());
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < s.numel; ++j)
        p[j] = static_cast<float>(s.init_std * normal01(seed, stream, static_cast<uint64_t>(j)));
    }
  }
}

void Model::set_int8(const Int8Weights* int8) {
  MOE_CHECK(!int8 || int8->matches(layout_), "model",
            "the INT8 weights were made for another model (layout differs); quantize this "
            "model's own parameters (moe quantize)");
  gemms_.set_int8(int8);
}

void Model::set_dispatcher(TokenDispatcher* d) {
  if (d) {
    MOE_CHECK(d->expert_first() == layout_.expert_first &&
                  d->experts_local(cfg_.n_routed_experts) == layout_.experts_local,
              "model", "the dispatcher serves experts [", d->expert_first(), ", ",
              d->expert_first() + d->experts_local(cfg_.n_routed_experts),
              ") but this model holds [", layout_.expert_first, ", ",
              layout_.expert_first + layout_.experts_local, ")");
  }
  dispatcher_ = d;
}

void Model::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

const std::vector<int32_t>& Model::routed_experts(int64_t layer) const {
  static const std::vector<int32_t> kNone;
  if (!acts_ || layer < 0 || size_t(layer) >= acts_->layers.size() || !cfg_.is_moe_layer(layer))
    return kNone;
  return acts_->layers[size_t(layer)].moe.plan.topk_idx;
}

void Model::reset_load() {
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    load_[l].assign(cfg_.is_moe_layer(l) ? cfg_.n_routed_experts : 0, 0);
}

void Model::update_balance_biases() {
  if (cfg_.bias_update_rate > 0) {
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      if (!cfg_.is_moe_layer(l)) continue;
      update_balance_bias(params_.data() + layout_.layers[l].bias, load_[l].data(),
                          cfg_.n_routed_experts, cfg_.bias_update_rate);
    }
  }
  reset_load();
}

MoeWeights Model::moe_weights(int64_t l, Gemms* gemms) const {
  const auto& o = layout_.layers[l];
  const float* p = params_.data();
  MoeWeights w;
  w.gemms = gemms;
  w.router = p + o.router;
  w.bias = p + o.bias;
  w.experts = p + o.experts;
  if (o.shared_gu >= 0) {
    w.shared_gu = p + o.shared_gu;
    w.shared_down = p + o.shared_down;
  }
  return w;
}

MoeGrads Model::moe_grads(int64_t l) {
  const auto& o = layout_.layers[l];
  float* g = grads_.data();
  MoeGrads d;
  d.router = g + o.router;
  d.experts = g + o.experts;
  if (o.shared_gu >= 0) {
    d.shared_gu = g + o.shared_gu;
    d.shared_down = g + o.shared_down;
  }
  return d;
}

const float* Model::logits() const { return acts_->logits.data(); }
const float* Model::token_losses() const { return acts_->losses.data(); }

LossStats Model::forward_backward(const int32_t* tokens, int64_t B, int64_t T, float grad_scale) {
  return run(tokens, B, T, true, grad_scale);
}

LossStats Model::forward(const int32_t* tokens, int64_t B, int64_t T) {
  return run(tokens, B, T, false, 1.0f);
}

LossStats Model::run(const int32_t* tokens, int64_t B, int64_t T, bool backward, float grad_scale) {
  const ModelConfig& c = cfg_;
  MOE_CHECK(B > 0 && T > 0, "model.forward", "batch ", B, " x ", T, " must be positive");
  MOE_CHECK(T <= c.max_position_embeddings, "model.forward", "sequence length ", T,
            " exceeds max_position_embeddings ", c.max_position_embeddings,
            "; use a shorter --seq-len or a config with larger max_position_embeddings");
  const int64_t N = B * T, D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, Dh = c.head_dim;
  const int64_t Qd = c.qkv_dim(), A = H * Dh, F = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float* P = params_.data();
  float* G = grads_.data();
  Activations& a = *acts_;
  TokenDispatcher& disp = dispatcher_ ? *dispatcher_ : local_dispatcher();
  a.B = B;
  a.T = T;

  // Split (B, T+1) tokens into inputs and targets, checking the vocabulary range.
  grow(a.inputs, N);
  grow(a.targets, N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int32_t in = tokens[b * (T + 1) + t], tg = tokens[b * (T + 1) + t + 1];
      MOE_CHECK(in >= 0 && in < V && tg >= 0 && tg < V, "model.forward", "token ",
                (in >= 0 && in < V) ? tg : in, " at batch ", b, " position ", t,
                " is outside the vocabulary [0, ", V, ")");
      a.inputs[b * T + t] = in;
      a.targets[b * T + t] = tg;
    }

  grow(a.res, (2 * L + 1) * N * D);
  a.layers.resize(L);
  grow(a.tmp, N * D);
  auto res = [&](int64_t i) { return a.res.data() + i * N * D; };  // (N, D)

  // ---------------------------------------------------------------- forward
  LossStats st;
  moe_stats_.clear();
  Gemms& gm = gemms_;
  gm.bind(compute_dtype_, P, layout_.total_numel);
  // Before a part's parameters are read: they may still be arriving (data parallelism's
  // all-gather), then their GEMM copies are cast (bf16, fp8).
  auto params_needed = [&](int64_t part) {
    if (params_needed_) params_needed_(part);
    gm.cast_weights(part_weights_[size_t(part + 1)]);
  };
  params_needed(-1);
  cpu::embedding_forward(res(0), a.inputs.data(), P + layout_.embed, N, D);
  for (int64_t l = 0; l < L; ++l) {
    params_needed(l);
    const LayerOffsets& o = layout_.layers[l];
    LayerActs& la = a.layers[l];
    grow(la.ln1, N * D);
    grow(la.rstd1, N);
    grow(la.qkv, N * Qd);
    grow(la.att, B * H * T * T);
    grow(la.atto, N * A);
    grow(la.ln2, N * D);
    grow(la.rstd2, N);
    const float* x = res(2 * l);
    float* xm = res(2 * l + 1);
    float* xo = res(2 * l + 2);

    // x_mid = x + o_proj(attention(rope(qkv(rmsnorm(x)))))
    cpu::rmsnorm_forward(la.ln1.data(), la.rstd1.data(), x, P + o.input_norm, N, D, eps);
    gm.forward(la.qkv.data(), la.ln1.data(), P + o.qkv, N, D, Qd);
    cpu::rope_apply(la.qkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, H, Dh, Qd, 0, false);
    cpu::rope_apply(la.qkv.data() + A, rope_cos_.data(), rope_sin_.data(), B, T, Hkv, Dh, Qd, 0,
                    false);
    gm.attention_forward(la.atto.data(), la.att.data(), la.qkv.data(), B, T, H, Hkv, Dh);
    gm.forward(a.tmp.data(), la.atto.data(), P + o.o_proj, N, A, D);
    add(xm, x, a.tmp.data(), N * D);

    // x_out = x_mid + ffn(rmsnorm(x_mid)), ffn dense SwiGLU or MoE
    cpu::rmsnorm_forward(la.ln2.data(), la.rstd2.data(), xm, P + o.post_norm, N, D, eps);
    if (!c.is_moe_layer(l)) {
      grow(la.gu, N * 2 * F);
      grow(la.h, N * F);
      gm.forward(la.gu.data(), la.ln2.data(), P + o.mlp_gu, N, D, 2 * F);
      cpu::swiglu_forward(la.h.data(), la.gu.data(), N, F);
      gm.forward(a.tmp.data(), la.h.data(), P + o.mlp_down, N, F, D);
    } else {
      MoeStats ms;
      moe_forward(a.tmp.data(), la.ln2.data(), moe_weights(l, &gm), c, B, T, la.moe, ms, disp);
      st.aux += ms.aux_loss;
      st.seq_aux += ms.seq_aux_loss;
      st.z += ms.z_loss;
      st.dropped += ms.dropped;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) load_[l][e] += ms.load[e];
      MoeLayerStats& mls = moe_stats_.emplace_back();
      mls.layer = l;
      mls.load = ms.load;
      mls.tokens = N;
      mls.slots = N * c.num_experts_per_tok;
      mls.dropped = ms.dropped;
      mls.entropy_sum = router_entropy_sum(la.moe.scores.data(), N, c.n_routed_experts);
    }
    add(xo, xm, a.tmp.data(), N * D);
  }
  grow(a.lnf, N * D);
  grow(a.rstdf, N);
  grow(a.logits, N * V);
  grow(a.losses, N);
  params_needed(L);
  cpu::rmsnorm_forward(a.lnf.data(), a.rstdf.data(), res(2 * L), P + layout_.final_norm, N, D,
                       eps);
  gm.forward(a.logits.data(), a.lnf.data(), P + layout_.lm_head, N, D, V);

  st.tokens = N;
  if (!backward) {
    st.ce = cpu::cross_entropy_forward(a.losses.data(), a.logits.data(), a.targets.data(), N, V) /
            static_cast<double>(N);
    st.loss = st.ce + st.aux + st.seq_aux + st.z;
    return st;
  }
  // dlogits replaces logits in place: d(mean CE * grad_scale) / dlogits.
  float* dlogits = a.logits.data();
  st.ce = cpu::cross_entropy_forward_backward(dlogits, a.losses.data(), a.logits.data(),
                                              a.targets.data(), N, V,
                                              grad_scale / static_cast<float>(N)) /
          static_cast<double>(N);
  st.loss = st.ce + st.aux + st.seq_aux + st.z;

  // ---------------------------------------------------------------- backward
  grow(a.dres, N * D);
  grow(a.dln, N * D);
  grow(a.datto, N * A);
  grow(a.dqkv, N * Qd);
  grow(a.att_scratch, cpu::attention_backward_scratch(T, Dh, omp_get_max_threads()));
  float* dres = a.dres.data();  // d loss / d residual stream, carried down through the layers
  float* dln = a.dln.data();

  gm.backward(dln, G + layout_.lm_head, dlogits, a.lnf.data(), P + layout_.lm_head, N, D, V,
              false);
  std::fill(dres, dres + N * D, 0.0f);
  cpu::rmsnorm_backward(dres, G + layout_.final_norm, dln, res(2 * L), P + layout_.final_norm,
                        a.rstdf.data(), N, D);
  // With tied embeddings the head's gradient lands in the embedding, which is final only at -1.
  if (grad_ready_) grad_ready_(L);

  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layout_.layers[l];
    LayerActs& la = a.layers[l];
    const float* x = res(2 * l);
    const float* xm = res(2 * l + 1);

    // ffn: dres is d x_out; the residual passes it to d x_mid unchanged, plus the branch.
    if (!c.is_moe_layer(l)) {
      std::vector<float>& dh = a.moe_scratch.dh;    // (N, F)
      std::vector<float>& dgu = a.moe_scratch.dgu;  // (N, 2F)
      grow(dh, N * F);
      grow(dgu, N * 2 * F);
      gm.backward(dh.data(), G + o.mlp_down, dres, la.h.data(), P + o.mlp_down, N, F, D, false);
      cpu::swiglu_backward(dgu.data(), dh.data(), la.gu.data(), N, F);
      gm.backward(dln, G + o.mlp_gu, dgu.data(), la.ln2.data(), P + o.mlp_gu, N, D, 2 * F, false);
    } else {
      moe_backward(dln, dres, la.ln2.data(), moe_weights(l, &gm), moe_grads(l), c, B, T, la.moe,
                   a.moe_scratch, grad_scale, disp);
    }
    cpu::rmsnorm_backward(dres, G + o.post_norm, dln, xm, P + o.post_norm, la.rstd2.data(), N, D);

    // attention: dres is now d x_mid.
    gm.backward(a.datto.data(), G + o.o_proj, dres, la.atto.data(), P + o.o_proj, N, A, D, false);
    gm.attention_backward(a.dqkv.data(), a.datto.data(), la.qkv.data(), la.att.data(),
                          a.att_scratch.data(), B, T, H, Hkv, Dh);
    cpu::rope_apply(a.dqkv.data(), rope_cos_.data(), rope_sin_.data(), B, T, H, Dh, Qd, 0, true);
    cpu::rope_apply(a.dqkv.data() + A, rope_cos_.data(), rope_sin_.data(), B, T, Hkv, Dh, Qd, 0,
                    true);
    gm.backward(dln, G + o.qkv, a.dqkv.data(), la.ln1.data(), P + o.qkv, N, D, Qd, false);
    cpu::rmsnorm_backward(dres, G + o.input_norm, dln, x, P + o.input_norm, la.rstd1.data(), N,
                          D);
    if (grad_ready_) grad_ready_(l);
  }
  cpu::embedding_backward(G + layout_.embed, dres, a.inputs.data(), N, D);
  if (grad_ready_) grad_ready_(-1);
  return st;
}

}  // namespace moe
