// The training story of one micro-batch: forward is a straight list of kernel calls, backward is
// the same list reversed with d-prefixed names (DESIGN.md section 6). Shapes: N = B*T tokens,
// D hidden. The attention of a block (GQA or MLA) is in model_attention.cpp, the
// multi-token-prediction modules in model_mtp.cpp, the saved activations in model_acts.h.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/kernels.h"
#include "model/model_acts.h"
#include "model/quantized.h"

namespace moe {

namespace {
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
// The linear weights of each part (model.h), for Gemms::cast_weights: index part + 1, so 0 the
// embedding (none), 1 + l layer l, L + 1 the head, L + 2 + k MTP module k (layer index L + k:
// its eh_proj and its block's projections). Every *_proj.weight and lm_head; the router
// (mlp.gate) stays f32.
std::vector<std::vector<WeightMatrix>> weight_matrices(const ParamLayout& layout, int64_t L,
                                                       int64_t M) {
  std::vector<std::vector<WeightMatrix>> parts(size_t(L + M + 2));
  bool head = false;
  for (const ParamSpec& s : layout.specs) {
    if (s.shape.size() != 2) continue;
    if (s.name == "lm_head.weight") {
      parts[size_t(L + 1)].push_back({s.offset, s.shape[0], s.shape[1], true});
      head = true;
    } else if (is_linear_weight(s) && s.layer >= 0) {
      const int64_t part = s.layer < L ? s.layer : s.layer + 1;  // MTP: L + 1 + k
      parts[size_t(part + 1)].push_back({s.offset, s.shape[0], s.shape[1], false});
    }
  }
  if (!head) {  // tied: the head is the embedding table [V, D]
    const ParamSpec* e = layout.find("model.embed_tokens.weight");
    MOE_CHECK(e && e->shape.size() == 2, "model", "no embedding table in the layout");
    parts[size_t(L + 1)].push_back({e->offset, e->shape[0], e->shape[1], true});
  }
  return parts;
}
}  // namespace

Model::Model(const ModelConfig& cfg, const LayoutOptions& parts)
    : cfg_(cfg), acts_(std::make_unique<Activations>()) {
  cfg_.validate();
  layout_ = make_layout(cfg_, parts);
  part_weights_ =
      weight_matrices(layout_, cfg_.num_hidden_layers, cfg_.num_nextn_predict_layers);
  params_.assign(layout_.total_numel, 0.0f);
  grads_.assign(layout_.total_numel, 0.0f);
  load_.resize(cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers);
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

// Load and balancing biases cover every MoE layer: main layers, then the MTP blocks (L + k).
void Model::reset_load() {
  for (int64_t l = 0; l < int64_t(load_.size()); ++l)
    load_[l].assign(cfg_.is_moe_layer(l) ? cfg_.n_routed_experts : 0, 0);
}

void Model::update_balance_biases() {
  if (cfg_.bias_update_rate > 0) {
    for (int64_t l = 0; l < int64_t(load_.size()); ++l) {
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
const float* Model::mtp_logits(int64_t k) const {
  MOE_CHECK(k >= 0 && k < int64_t(acts_->mtp.size()), "model", "MTP module ", k,
            " does not exist or has not run (num_nextn_predict_layers = ",
            cfg_.num_nextn_predict_layers, ")");
  return acts_->mtp[size_t(k)].logits.data();
}
const float* Model::token_losses() const { return acts_->losses.data(); }

LossStats Model::forward_backward(const int32_t* tokens, int64_t B, int64_t T, float grad_scale) {
  return run(tokens, B, T, true, grad_scale);
}

LossStats Model::forward(const int32_t* tokens, int64_t B, int64_t T) {
  return run(tokens, B, T, false, 1.0f);
}

void Model::block_forward(int64_t l, const float* x, float* xm, float* xo, int64_t B, int64_t T,
                          LossStats& st, TokenDispatcher& disp) {
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, D = c.hidden_size, F = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float* P = params_.data();
  const LayerOffsets& o = layout_.layers[l];
  Activations& a = *acts_;
  LayerActs& la = a.layers[l];
  Gemms& gm = gemms_;
  grow(la.ln1, N * D);
  grow(la.rstd1, N);
  grow(la.ln2, N * D);
  grow(la.rstd2, N);
  grow(a.tmp, N * D);

  // x_mid = x + attention(rmsnorm(x))   (o_proj included)
  cpu::rmsnorm_forward(la.ln1.data(), la.rstd1.data(), x, P + o.input_norm, N, D, eps);
  attention_forward(l, a.tmp.data(), B, T);
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

void Model::block_backward(int64_t l, float* dres, const float* x, const float* xm, int64_t B,
                           int64_t T, float grad_scale, TokenDispatcher& disp) {
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, D = c.hidden_size, F = c.intermediate_size;
  const float* P = params_.data();
  float* G = grads_.data();
  const LayerOffsets& o = layout_.layers[l];
  Activations& a = *acts_;
  LayerActs& la = a.layers[l];
  Gemms& gm = gemms_;
  grow(a.dln, N * D);
  float* dln = a.dln.data();

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
  attention_backward(l, dln, dres, B, T);
  cpu::rmsnorm_backward(dres, G + o.input_norm, dln, x, P + o.input_norm, la.rstd1.data(), N, D);
}

LossStats Model::run(const int32_t* tokens, int64_t B, int64_t T, bool backward, float grad_scale) {
  const ModelConfig& c = cfg_;
  MOE_CHECK(B > 0 && T > 0, "model.forward", "batch ", B, " x ", T, " must be positive");
  MOE_CHECK(T <= c.max_position_embeddings, "model.forward", "sequence length ", T,
            " exceeds max_position_embeddings ", c.max_position_embeddings,
            "; use a shorter --seq-len or a config with larger max_position_embeddings");
  const int64_t M = c.num_nextn_predict_layers;
  MOE_CHECK(T > M, "model.forward", "sequence length ", T,
            " is too short for num_nextn_predict_layers = ", M, ": MTP module k predicts token ",
            "i + k + 2, so T must be at least ", M + 1, "; use a longer seq_len");
  const int64_t N = B * T, D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
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
  a.layers.resize(L + M);
  a.mtp.resize(M);
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
    block_forward(l, res(2 * l), res(2 * l + 1), res(2 * l + 2), B, T, st, disp);
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

  // Multi-token prediction: module k reads h_k (h_0 = lnf) and predicts t_{i+k+2}.
  if (M > 0) {
    grow(a.argmax, N);
    argmax_rows(a.argmax.data(), a.logits.data(), N, V);
    st.mtp_ce.assign(size_t(M), 0.0);
    for (int64_t k = 0; k < M; ++k) {
      params_needed(L + 1 + k);
      mtp_forward(k, tokens, B, T, backward, grad_scale, st, disp);
    }
  }

  if (!backward) {
    st.ce = cpu::cross_entropy_forward(a.losses.data(), a.logits.data(), a.targets.data(), N, V) /
            static_cast<double>(N);
    st.loss = st.ce + st.mtp + st.aux + st.seq_aux + st.z;
    return st;
  }
  // dlogits replaces logits in place: d(mean CE * grad_scale) / dlogits.
  float* dlogits = a.logits.data();
  st.ce = cpu::cross_entropy_forward_backward(dlogits, a.losses.data(), a.logits.data(),
                                              a.targets.data(), N, V,
                                              grad_scale / static_cast<float>(N)) /
          static_cast<double>(N);
  st.loss = st.ce + st.mtp + st.aux + st.seq_aux + st.z;

  // ---------------------------------------------------------------- backward
  grow(a.dres, N * D);
  grow(a.dln, N * D);
  float* dres = a.dres.data();  // d loss / d residual stream, carried down through the layers
  float* dln = a.dln.data();

  // MTP modules, last first: each hands d h_k of its first T-k-1 positions to the depth below.
  for (int64_t k = M - 1; k >= 0; --k) {
    mtp_backward(k, B, T, grad_scale, disp);
    if (grad_ready_) grad_ready_(L + 1 + k);
  }
  gm.backward(dln, G + layout_.lm_head, dlogits, a.lnf.data(), P + layout_.lm_head, N, D, V,
              false);
  if (M > 0) {  // d h_0 from module 0: rows (b, t < T-1)
    const float* dh0 = a.dh_carry.data();  // (B, T-1, D)
    for (int64_t b = 0; b < B; ++b)
      add(dln + b * T * D, dln + b * T * D, dh0 + b * (T - 1) * D, (T - 1) * D);
  }
  std::fill(dres, dres + N * D, 0.0f);
  cpu::rmsnorm_backward(dres, G + layout_.final_norm, dln, res(2 * L), P + layout_.final_norm,
                        a.rstdf.data(), N, D);
  // With tied embeddings the head's gradient lands in the embedding, which is final only at -1.
  if (grad_ready_) grad_ready_(L);

  for (int64_t l = L - 1; l >= 0; --l) {
    block_backward(l, dres, res(2 * l), res(2 * l + 1), B, T, grad_scale, disp);
    if (grad_ready_) grad_ready_(l);
  }
  cpu::embedding_backward(G + layout_.embed, dres, a.inputs.data(), N, D);
  if (grad_ready_) grad_ready_(-1);
  return st;
}

}  // namespace moe
