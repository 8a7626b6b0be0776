// MoE routing kernels (see moe_kernels.h). Token-parallel loops write disjoint rows, so results
// do not depend on the thread count; the loss values are O(N*E) and summed serially in double.
#include "core/profile.h"
#include "kernels/cpu/moe_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace moe::cpu {

namespace {

// s (E) from z (E), fp32.
inline void scores_of(float* s, const float* z, int64_t E, ScoringFunc f) {
  if (f == ScoringFunc::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-z[e]));
    return;
  }
  float m = z[0];
  for (int64_t e = 1; e < E; ++e) m = z[e] > m ? z[e] : m;
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(z[e] - m));
  const float inv = 1.0f / sum;
  for (int64_t e = 0; e < E; ++e) s[e] *= inv;
}

inline float logsumexp(const float* z, int64_t E) {
  float m = z[0];
  for (int64_t e = 1; e < E; ++e) m = z[e] > m ? z[e] : m;
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) sum += std::exp(z[e] - m);
  return m + std::log(sum);
}

// Group-limited routing. A group's score is the sum of its two largest keys s + b (the
// larger first, as torch's topk(2).sum()); NaN reads as -inf so that groups are totally ordered
// by (score descending, index ascending).
inline float group_score(const float* s, const float* bias, int64_t first, int64_t Eg) {
  float a = -INFINITY, b = -INFINITY;  // largest, second largest
  for (int64_t e = first; e < first + Eg; ++e) {
    const float k = s[e] + (bias ? bias[e] : 0.0f);
    if (k > a) {
      b = a, a = k;
    } else if (k > b) {
      b = k;
    }
  }
  const float g = Eg == 1 ? a : a + b;
  return g == g ? g : -INFINITY;
}

// The topk_group-th best group: a group is kept iff it is not ranked after this one.
struct GroupCut {
  float score;
  int64_t group;
  bool keeps(float gs, int64_t g) const { return gs > score || (gs == score && g <= group); }
};

// topk_group rounds of "best group ranked after the previous cut": O(topk_group * E) and no
// scratch memory (kernels do not allocate).
inline GroupCut group_cut(const float* s, const float* bias, int64_t G, int64_t Eg,
                          int64_t topk_group) {
  GroupCut cut{INFINITY, -1};  // before every group
  for (int64_t r = 0; r < topk_group; ++r) {
    GroupCut best{0.0f, -1};
    for (int64_t g = 0; g < G; ++g) {
      const float gs = group_score(s, bias, g * Eg, Eg);
      if (cut.keeps(gs, g)) continue;                                  // taken in an earlier round
      if (best.group < 0 || gs > best.score) best = GroupCut{gs, g};  // ties: lower g
    }
    cut = best;
  }
  return cut;
}

}  // namespace

void router_forward(float* scores, int32_t* topk_idx, float* topk_w, const float* logits,
                    const float* bias, int64_t N, const RouterSpec& spec) {
  const prof::Scope prof_scope(prof::Part::kRouter);
  const int64_t E = spec.E, K = spec.K;
  const float scale = float(spec.routed_scaling_factor);
  // topk_group >= n_group keeps every group: the same selection as no limit.
  const int64_t G = spec.n_group, Eg = G > 0 ? E / G : E;
  const bool group_limited = G > 1 && spec.topk_group < G;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* s = scores + n * E;
    int32_t* idx = topk_idx + n * K;
    scores_of(s, logits + n * E, E, spec.scoring);
    // Insertion into a list sorted by descending key (s + b), experts offered in ascending
    // order; an equal key goes after the entries already there, so ties keep the lower index.
    auto key = [&](int64_t e) { return s[e] + (bias ? bias[e] : 0.0f); };
    int64_t filled = 0;
    auto offer = [&](int64_t e) {
      const float ke = key(e);
      int64_t pos = filled;
      while (pos > 0 && ke > key(idx[pos - 1])) --pos;
      if (pos >= K) return;
      for (int64_t j = (filled < K ? filled : K - 1); j > pos; --j) idx[j] = idx[j - 1];
      idx[pos] = int32_t(e);
      if (filled < K) ++filled;
    };
    if (group_limited) {  // only the experts of the topk_group best groups (>= K of them)
      const GroupCut cut = group_cut(s, bias, G, Eg, spec.topk_group);
      for (int64_t g = 0; g < G; ++g)
        if (cut.keeps(group_score(s, bias, g * Eg, Eg), g))
          for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) offer(e);
    } else {
      for (int64_t e = 0; e < E; ++e) offer(e);
    }
    float* g = topk_w + n * K;
    float denom = 0.0f;
    for (int64_t k = 0; k < K; ++k) denom += s[idx[k]];
    for (int64_t k = 0; k < K; ++k) {
      float gk = s[idx[k]];
      if (spec.norm_topk_prob) gk = gk / denom;
      g[k] = gk * scale;
    }
  }
}

void router_counts(int64_t* load, int64_t* seq_load, const int32_t* topk_idx, int64_t B,
                   int64_t T, int64_t E, int64_t K) {
  const prof::Scope prof_scope(prof::Part::kRouter);
  std::memset(load, 0, sizeof(int64_t) * size_t(E));
  std::memset(seq_load, 0, sizeof(int64_t) * size_t(B * E));
  for (int64_t i = 0; i < B * T * K; ++i) {
    ++seq_load[(i / (T * K)) * E + topk_idx[i]];
    ++load[topk_idx[i]];
  }
}

int64_t route_plan(int32_t* slot_row, int64_t* expert_count, int64_t* offsets,
                   const int32_t* topk_idx, int64_t N, int64_t E, int64_t K, int64_t capacity,
                   const int64_t* taken) {
  const prof::Scope prof_scope(prof::Part::kRouter);
  // Pass 1: each slot's rank within its expert (token order) in slot_row, -1 past capacity.
  // expert_count counts every assignment here and is clamped to the capacity afterwards.
  std::memset(expert_count, 0, sizeof(int64_t) * size_t(E));
  int64_t dropped = 0;
  for (int64_t i = 0; i < N * K; ++i) {
    const int64_t rank = expert_count[topk_idx[i]]++;
    const bool keep = capacity <= 0 || rank + (taken ? taken[topk_idx[i]] : 0) < capacity;
    slot_row[i] = keep ? int32_t(rank) : -1;
    dropped += !keep;
  }
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (capacity > 0) {
      const int64_t room = std::max<int64_t>(0, capacity - (taken ? taken[e] : 0));
      expert_count[e] = std::min(expert_count[e], room);
    }
    offsets[e + 1] = offsets[e] + expert_count[e];
  }
  // Pass 2: rank -> row.
  for (int64_t i = 0; i < N * K; ++i)
    if (slot_row[i] >= 0) slot_row[i] += int32_t(offsets[topk_idx[i]]);
  return dropped;
}

int64_t expert_capacity(double capacity_factor, int64_t N, int64_t K, int64_t E) {
  if (capacity_factor <= 0) return 0;
  return int64_t(std::ceil(capacity_factor * double(N) * double(K) / double(E)));
}

RouterLosses router_losses(const float* logits, const float* scores, const int64_t* load,
                           const int64_t* seq_load, int64_t B, int64_t T,
                           const RouterSpec& spec, const RouterLossCoefs& coefs) {
  // sum_e f_e P_e = (1/N) sum_n q_n with q_n = sum_e f_e s_ne / sum_j s_nj: one pass per token.
  const int64_t E = spec.E, K = spec.K, N = B * T;
  RouterLosses out;
  if (coefs.aux_alpha != 0 || coefs.seq_aux_alpha != 0) {
    double aux = 0, seq_aux = 0;
    for (int64_t b = 0; b < B; ++b) {
      double seq = 0;
      for (int64_t n = b * T; n < (b + 1) * T; ++n) {
        const float* s = scores + n * E;
        double sum = 0, q = 0, qb = 0;
        for (int64_t e = 0; e < E; ++e) {
          sum += s[e];
          q += double(load[e]) * s[e];
          qb += double(seq_load[b * E + e]) * s[e];
        }
        aux += q / sum;
        seq += qb / sum;
      }
      seq_aux += seq * double(E) / double(K * T) / double(T);
    }
    out.aux = coefs.aux_alpha * coefs.load_scale * aux * double(E) / double(K * N) / double(N);
    out.seq_aux = coefs.seq_aux_alpha * seq_aux / double(B);
  }
  if (coefs.z_loss_coef != 0) {
    double sum = 0;
    for (int64_t n = 0; n < N; ++n) {
      const double l = logsumexp(logits + n * E, E);
      sum += l * l;
    }
    out.z = coefs.z_loss_coef * sum / double(N);
  }
  return out;
}

void router_backward(float* dz, const float* dgate, const float* logits, const float* scores,
                     const int32_t* topk_idx, const float* topk_w, const int64_t* load,
                     const int64_t* seq_load, int64_t B, int64_t T, const RouterSpec& spec,
                     const RouterLossCoefs& coefs) {
  const prof::Scope prof_scope(prof::Part::kRouter);
  const int64_t E = spec.E, K = spec.K, N = B * T;
  const float c = float(spec.routed_scaling_factor);
  const bool balance = coefs.aux_alpha != 0 || coefs.seq_aux_alpha != 0;
  // dL/dp_{n,e} = aux_alpha f_e / N + seq_alpha f^b_e / (B T), f_e = E/(K N) load_e,
  // f^b_e = E/(K T) seq_load_{b,e}.
  const float a_coef =
      float(coefs.aux_alpha * coefs.load_scale * double(E) / double(K * N) / double(N));
  const float b_coef = float(coefs.seq_aux_alpha * double(E) / double(K * T) / double(B * T));
  const float z_coef = float(2.0 * coefs.z_loss_coef / double(N));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* s = scores + n * E;
    const float* dg = dgate + n * K;
    const float* g = topk_w + n * K;
    const int32_t* idx = topk_idx + n * K;
    float* d = dz + n * E;  // holds ds first, then dz
    for (int64_t e = 0; e < E; ++e) d[e] = 0.0f;
    // Gates g_k = c s_k / Z: ds_k = (c dg_k - sum_j dg_j g_j) / Z, or c dg_k without norm.
    if (spec.norm_topk_prob) {
      float Z = 0.0f, dot = 0.0f;
      for (int64_t k = 0; k < K; ++k) Z += s[idx[k]], dot += dg[k] * g[k];
      for (int64_t k = 0; k < K; ++k) d[idx[k]] += (c * dg[k] - dot) / Z;
    } else {
      for (int64_t k = 0; k < K; ++k) d[idx[k]] += c * dg[k];
    }
    if (balance) {  // through p = s / sum(s)
      const int64_t* sl = seq_load + (n / T) * E;
      float sum = 0.0f, dot = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += s[e];
      auto dp = [&](int64_t e) { return a_coef * float(load[e]) + b_coef * float(sl[e]); };
      for (int64_t e = 0; e < E; ++e) dot += dp(e) * s[e];
      dot /= sum;
      for (int64_t e = 0; e < E; ++e) d[e] += (dp(e) - dot) / sum;
    }
    if (spec.scoring == ScoringFunc::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) d[e] = d[e] * s[e] * (1.0f - s[e]);
    } else {
      float dot = 0.0f;
      for (int64_t e = 0; e < E; ++e) dot += s[e] * d[e];
      for (int64_t e = 0; e < E; ++e) d[e] = s[e] * (d[e] - dot);
    }
    if (z_coef != 0.0f) {  // d/dz of coef/N lse^2 = 2 coef/N lse softmax(z)
      const float* z = logits + n * E;
      const float l = logsumexp(z, E);
      for (int64_t e = 0; e < E; ++e) d[e] += z_coef * l * std::exp(z[e] - l);
    }
  }
}

void permute(float* sorted_x, const float* x, const int32_t* slot_row, int64_t N, int64_t K,
             int64_t D) {
  const prof::Scope prof_scope(prof::Part::kPermute);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = slot_row[n * K + k];
      if (row >= 0) std::memcpy(sorted_x + row * D, x + n * D, sizeof(float) * size_t(D));
    }
}

void permute_backward(float* dx, const float* dsorted_x, const int32_t* slot_row, int64_t N,
                      int64_t K, int64_t D) {
  const prof::Scope prof_scope(prof::Part::kPermute);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* out = dx + n * D;
    for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = slot_row[n * K + k];
      if (row < 0) continue;
      const float* src = dsorted_x + row * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += src[d];
    }
  }
}

void unpermute_weighted(float* y, const float* sorted_y, const float* topk_w,
                        const int32_t* slot_row, int64_t N, int64_t K, int64_t D) {
  const prof::Scope prof_scope(prof::Part::kPermute);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* out = y + n * D;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = slot_row[n * K + k];
      if (row < 0) continue;
      const float w = topk_w[n * K + k];
      const float* src = sorted_y + row * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += w * src[d];
    }
  }
}

void unpermute_weighted_backward(float* dsorted_y, float* dgate, const float* dy,
                                 const float* sorted_y, const float* topk_w,
                                 const int32_t* slot_row, int64_t N, int64_t K, int64_t D) {
  const prof::Scope prof_scope(prof::Part::kPermute);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = dy + n * D;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = slot_row[n * K + k];
      if (row < 0) {
        dgate[n * K + k] = 0.0f;
        continue;
      }
      const float w = topk_w[n * K + k];
      const float* src = sorted_y + row * D;
      float* dst = dsorted_y + row * D;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) {
        dot += g[d] * src[d];
        dst[d] = w * g[d];
      }
      dgate[n * K + k] = dot;
    }
  }
}

}  // namespace moe::cpu
