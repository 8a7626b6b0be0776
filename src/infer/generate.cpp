// Decoding one token at a time: each layer keeps K and V of every past position (the KV cache),
// so a new token costs one row of every projection plus attention over the cache. GQA or MLA
// (each head's key and value cached after kv_b_proj); MTP modules are not used.
// With Int8Weights, every projection and expert runs as an int8 kernel (kernels/cpu/int8.h);
// the router, norms, attention scores, embedding and lm_head stay fp32.
#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "model/quantized.h"
#include "kernels/cpu/kernels.h"

namespace moe {

namespace {

class Decoder {
 public:
  Decoder(const Model& m, const Int8Weights* int8) : m_(m), c_(m.config()), int8_(int8) {
    // MTP modules (layers L..L+M-1) are training-only here: decoding runs the main model.
    if (int8_ != nullptr && int8_->empty()) int8_ = nullptr;
    MOE_CHECK(int8_ == nullptr || int8_->matches(m.layout()), "generate",
              "the int8 weights were made for another model or layout; build them from this "
              "model (Int8Weights::quantize) or load them with its checkpoint");
    MOE_CHECK(int8_ == nullptr || m.layout().experts_local == c_.n_routed_experts, "generate",
              "int8 decoding needs every routed expert in this process (the model holds ",
              m.layout().experts_local, " of ", c_.n_routed_experts, ")");
    // The model's own GEMM router (model/gemms.h), f32 with the int8 copies where they exist;
    // MoE layers reach it through moe_weights().
    gemms_.bind(ComputeDtype::kF32, m.params().data(), m.layout().total_numel);
    gemms_.set_int8(int8_);
    const int64_t half = c_.head_dim / 2, P = c_.max_position_embeddings;
    cos_.resize(P * half);
    sin_.resize(P * half);
    cpu::rope_tables(cos_.data(), sin_.data(), P, c_.head_dim, c_.rope_theta);
    // GQA caches Hkv*Dh keys and values per position; MLA each head's full key [k_nope | k_pe]
    // (H*(dn+dr)) and value (H*dv), not the latent (DeepSeek's absorbed form would cache rkv+dr).
    const int64_t H = c_.num_attention_heads;
    kd_ = c_.is_mla() ? H * c_.qk_head_dim() : c_.num_key_value_heads * c_.head_dim;
    vd_ = c_.is_mla() ? H * c_.v_head_dim : c_.num_key_value_heads * c_.head_dim;
    k_.assign(c_.num_hidden_layers, std::vector<float>(P * kd_));
    v_.assign(c_.num_hidden_layers, std::vector<float>(P * vd_));
    caches_.resize(c_.num_hidden_layers);
  }

  int64_t pos() const { return pos_; }
  void reset() { pos_ = 0; }

  // Feeds one token at position pos(); returns the logits (V) of the next one.
  const std::vector<float>& step(int32_t token) {
    const ModelConfig& c = c_;
    MOE_CHECK(token >= 0 && token < c.vocab_size, "generate", "token ", token,
              " is outside the vocabulary [0, ", c.vocab_size, ")");
    MOE_CHECK(pos_ < c.max_position_embeddings, "generate", "KV cache full");
    const ParamLayout& lay = m_.layout();
    const float* P = m_.params().data();
    const int64_t D = c.hidden_size, F = c.intermediate_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    x_.resize(D), ln_.resize(D), tmp_.resize(D);
    scores_.resize(pos_ + 1);
    float rstd;

    cpu::embedding_forward(x_.data(), &token, P + lay.embed, 1, D);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LayerOffsets& o = lay.layers[l];
      cpu::rmsnorm_forward(ln_.data(), &rstd, x_.data(), P + o.input_norm, 1, D, eps);
      if (c.is_mla())
        attention_mla(l, o);
      else
        attention_gqa(l, o);
      for (int64_t i = 0; i < D; ++i) x_[i] += tmp_[i];

      cpu::rmsnorm_forward(ln_.data(), &rstd, x_.data(), P + o.post_norm, 1, D, eps);
      if (!c.is_moe_layer(l)) {
        gu_.resize(2 * F), h_.resize(F);
        linear(gu_.data(), ln_.data(), o.mlp_gu, D, 2 * F);
        cpu::swiglu_forward(h_.data(), gu_.data(), 1, F);
        linear(tmp_.data(), h_.data(), o.mlp_down, F, D);
      } else {
        MoeStats stats;
        moe_forward(tmp_.data(), ln_.data(), m_.moe_weights(l, &gemms_), c, 1, 1, caches_[l],
                    stats);
      }
      for (int64_t i = 0; i < D; ++i) x_[i] += tmp_[i];
    }
    cpu::rmsnorm_forward(ln_.data(), &rstd, x_.data(), P + lay.final_norm, 1, D, eps);
    logits_.resize(c.vocab_size);
    cpu::linear_forward(logits_.data(), ln_.data(), P + lay.lm_head, 1, D, c.vocab_size);
    ++pos_;
    return logits_;
  }

 private:
  // out (dv) = sum_j softmax_j(scale * q . k_j) v_j over the cached positions j <= pos_, keys
  // dk wide at kc + j * kd_, values dv wide at vc + j * vd_ (pointers at the head's columns).
  void attend(float* out, const float* q, const float* kc, const float* vc, int64_t dk,
              int64_t dv, float scale) {
    float mx = -INFINITY;
    for (int64_t j = 0; j <= pos_; ++j) {
      const float* k = kc + j * kd_;
      float s = 0;
      for (int64_t d = 0; d < dk; ++d) s += q[d] * k[d];
      scores_[j] = s * scale;
      mx = std::max(mx, scores_[j]);
    }
    float den = 0;
    for (int64_t j = 0; j <= pos_; ++j) den += (scores_[j] = std::exp(scores_[j] - mx));
    std::fill(out, out + dv, 0.0f);
    for (int64_t j = 0; j <= pos_; ++j) {
      const float p = scores_[j] / den;
      const float* v = vc + j * vd_;
      for (int64_t d = 0; d < dv; ++d) out[d] += p * v[d];
    }
  }

  // tmp_ (D) = o_proj(attention(ln_)) at position pos_, caching this position's k and v.
  void attention_gqa(int64_t l, const LayerOffsets& o) {
    const ModelConfig& c = c_;
    const int64_t D = c.hidden_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
    const int64_t Dh = c.head_dim, Qd = c.qkv_dim(), A = H * Dh, kvd = Hkv * Dh;
    const int64_t group = H / Hkv;
    qkv_.resize(Qd), atto_.resize(A);
    linear(qkv_.data(), ln_.data(), o.qkv, D, Qd);
    cpu::rope_apply(qkv_.data(), cos_.data(), sin_.data(), 1, 1, H, Dh, Qd, pos_, false);
    cpu::rope_apply(qkv_.data() + A, cos_.data(), sin_.data(), 1, 1, Hkv, Dh, Qd, pos_, false);
    float* kc = k_[l].data();  // (P, Hkv*Dh)
    float* vc = v_[l].data();
    std::copy(qkv_.begin() + A, qkv_.begin() + A + kvd, kc + pos_ * kvd);
    std::copy(qkv_.begin() + A + kvd, qkv_.begin() + A + 2 * kvd, vc + pos_ * kvd);
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kv = h / group;
      attend(atto_.data() + h * Dh, qkv_.data() + h * Dh, kc + kv * Dh, vc + kv * Dh, Dh, Dh,
             scale);
    }
    linear(tmp_.data(), atto_.data(), o.o_proj, A, D);
  }

  // MLA (model_attention.cpp's equations) for one token: q through the latent or q_proj,
  // [c_kv | k_pe], kv_b_proj of the normed latent, RoPE at pos_, softmax scale 1/sqrt(dn + dr).
  void attention_mla(int64_t l, const LayerOffsets& o) {
    const ModelConfig& c = c_;
    const float* P = m_.params().data();
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t D = c.hidden_size, H = c.num_attention_heads, rq = c.q_lora_rank;
    const int64_t rkv = c.kv_lora_rank, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
    const int64_t dv = c.v_head_dim, dqk = dn + dr, Qw = H * dqk;
    float rstd;
    q_.resize(Qw), kva_.resize(rkv + dr), kv_.resize(H * (dn + dv)), atto_.resize(H * dv);
    if (rq > 0) {
      qa_.resize(rq), qan_.resize(rq);
      linear(qa_.data(), ln_.data(), o.q_a, D, rq);
      cpu::rmsnorm_forward(qan_.data(), &rstd, qa_.data(), P + o.q_a_norm, 1, rq, eps);
      linear(q_.data(), qan_.data(), o.q_b, rq, Qw);
    } else {
      linear(q_.data(), ln_.data(), o.q_proj, D, Qw);
    }
    linear(kva_.data(), ln_.data(), o.kv_a, D, rkv + dr);
    kvn_.resize(rkv);
    cpu::rmsnorm_forward(kvn_.data(), &rstd, kva_.data(), P + o.kv_a_norm, 1, rkv, eps);
    linear(kv_.data(), kvn_.data(), o.kv_b, rkv, H * (dn + dv));
    for (int64_t h = 0; h < H; ++h)
      cpu::rope_apply(q_.data() + h * dqk + dn, cos_.data(), sin_.data(), 1, 1, 1, dr, Qw, pos_,
                      false);
    cpu::rope_apply(kva_.data() + rkv, cos_.data(), sin_.data(), 1, 1, 1, dr, rkv + dr, pos_,
                    false);
    float* kc = k_[l].data();  // (P, H*dqk): per head [k_nope | k_pe]
    float* vc = v_[l].data();  // (P, H*dv)
    for (int64_t h = 0; h < H; ++h) {
      const float* kvh = kv_.data() + h * (dn + dv);
      float* k = kc + pos_ * kd_ + h * dqk;
      std::copy(kvh, kvh + dn, k);
      std::copy(kva_.begin() + rkv, kva_.begin() + rkv + dr, k + dn);
      std::copy(kvh + dn, kvh + dn + dv, vc + pos_ * vd_ + h * dv);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(dqk));
    for (int64_t h = 0; h < H; ++h)
      attend(atto_.data() + h * dv, q_.data() + h * dqk, kc + h * dqk, vc + h * dv, dqk, dv,
             scale);
    linear(tmp_.data(), atto_.data(), o.o_proj, H * dv, D);
  }

  // y (out) = W x for the weight at arena offset `off`, in int8 when there is a copy.
  void linear(float* y, const float* x, int64_t off, int64_t in, int64_t out) {
    gemms_.forward(y, x, m_.params().data() + off, 1, in, out);
  }

  const Model& m_;
  const ModelConfig& c_;
  const Int8Weights* int8_;
  Gemms gemms_;
  std::vector<float> cos_, sin_;
  std::vector<std::vector<float>> k_, v_;  // per layer (P, kd_), (P, vd_)
  int64_t kd_ = 0, vd_ = 0;                // cached key / value floats per position
  std::vector<float> q_, qa_, qan_, kva_, kvn_, kv_;  // MLA: one token's projections
  std::vector<MoeCache> caches_;
  std::vector<float> x_, ln_, qkv_, atto_, tmp_, gu_, h_, scores_, logits_;
  int64_t pos_ = 0;
};

int32_t sample(const std::vector<float>& logits, const GenerateOptions& opt, uint64_t draw) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (opt.temperature <= 0)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  const int64_t k = (opt.top_k > 0 && opt.top_k < V) ? opt.top_k : V;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  const double mx = logits[idx[0]];
  double den = 0;
  for (int64_t i = 0; i < k; ++i)
    den += (p[i] = std::exp((logits[idx[i]] - mx) / opt.temperature));
  double u = uniform01(opt.seed, stream_id("generate"), draw) * den;
  for (int64_t i = 0; i < k; ++i) {
    u -= p[i];
    if (u <= 0) return idx[i];
  }
  return idx[k - 1];
}

}  // namespace

std::vector<float> next_token_logits(const Model& model, const std::vector<int32_t>& context,
                                     const Int8Weights* int8) {
  MOE_CHECK(!context.empty(), "generate", "empty context");
  Decoder dec(model, int8);
  std::vector<float> out;
  for (int32_t t : context) out = dec.step(t);
  return out;
}

double window_loss_sum(const Model& model, const std::vector<int32_t>& window,
                       const Int8Weights* int8) {
  const int64_t n = static_cast<int64_t>(window.size());
  MOE_CHECK(n >= 2 && n <= model.config().max_position_embeddings + 1, "generate", "a window of ",
            n, " tokens; need 2 to max_position_embeddings + 1 = ",
            model.config().max_position_embeddings + 1);
  Decoder dec(model, int8);
  double sum = 0;
  for (int64_t t = 0; t + 1 < n; ++t) {
    const std::vector<float>& z = dec.step(window[t]);
    const int32_t target = window[t + 1];
    MOE_CHECK(target >= 0 && target < int64_t(z.size()), "generate", "token ", target,
              " is outside the vocabulary [0, ", z.size(), ")");
    double mx = z[0];
    for (float v : z) mx = std::max(mx, double(v));
    double den = 0;
    for (float v : z) den += std::exp(double(v) - mx);
    sum += mx + std::log(den) - double(z[target]);
  }
  return sum;
}

std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  const int64_t P = model.config().max_position_embeddings;
  Decoder dec(model, opt.int8);
  std::vector<int32_t> context = prompt;
  if (context.empty()) context.push_back('\n');
  if (static_cast<int64_t>(context.size()) > P)
    context.erase(context.begin(), context.end() - P / 2);
  std::vector<float> logits;
  for (int32_t t : context) logits = dec.step(t);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t t = sample(logits, opt, static_cast<uint64_t>(i));
    out.push_back(t);
    context.push_back(t);
    if (on_token) on_token(t);
    if (i + 1 == opt.max_new_tokens) break;
    if (dec.pos() == P) {  // cache full: restart from the last half of the context
      dec.reset();
      context.erase(context.begin(), context.end() - P / 2);
      for (int32_t c : context) logits = dec.step(c);
    } else {
      logits = dec.step(t);
    }
  }
  return out;
}

}  // namespace moe
