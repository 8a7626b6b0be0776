// Scalar reference twins of moe_kernels.h: same signatures, templated on the element type
// (float for fast-vs-ref tests, double for finite-difference gradient checks). Written for
// clarity, one token at a time, no threads; the integer kernels use a different algorithm
// from the fast ones (a scan per expert) so the tests compare two formulations.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/moe_kernels.h"

namespace moe::cpu {

namespace ref_detail {
template <class T>
void scores_of(T* s, const T* z, int64_t E, ScoringFunc f) {  // s (E) from z (E)
  if (f == ScoringFunc::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) s[e] = T(1) / (T(1) + std::exp(-z[e]));
    return;
  }
  T m = z[0];
  for (int64_t e = 1; e < E; ++e) m = z[e] > m ? z[e] : m;
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(z[e] - m));
  for (int64_t e = 0; e < E; ++e) s[e] /= sum;
}
template <class T>
T logsumexp(const T* z, int64_t E) {
  T m = z[0];
  for (int64_t e = 1; e < E; ++e) m = z[e] > m ? z[e] : m;
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += std::exp(z[e] - m);
  return m + std::log(sum);
}
}  // namespace ref_detail

template <class T>
void router_forward_ref(T* scores, int32_t* topk_idx, T* topk_w, const T* logits, const T* bias,
                        int64_t N, const RouterSpec& spec) {
  const int64_t E = spec.E, K = spec.K;
  for (int64_t n = 0; n < N; ++n) {
    T* s = scores + n * E;
    ref_detail::scores_of(s, logits + n * E, E, spec.scoring);
    auto key_of = [&](int64_t e) { return s[e] + (bias ? bias[e] : T(0)); };
    // Group limit: experts outside the topk_group best groups start out taken (excluded).
    std::vector<bool> taken(E, false);
    if (spec.n_group > 1) {
      const int64_t G = spec.n_group, Eg = E / G;
      std::vector<T> gscore(G);
      for (int64_t g = 0; g < G; ++g) {  // top-1 plus top-2 of the group, two argmax scans
        int64_t i1 = -1, i2 = -1;
        for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e)
          if (i1 < 0 || key_of(e) > key_of(i1)) i1 = e;
        for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e)
          if (e != i1 && (i2 < 0 || key_of(e) > key_of(i2))) i2 = e;
        const T v = i2 < 0 ? key_of(i1) : key_of(i1) + key_of(i2);
        gscore[g] = std::isnan(v) ? -INFINITY : v;
      }
      std::vector<bool> kept(G, false);
      for (int64_t r = 0; r < spec.topk_group && r < G; ++r) {  // strict >: lower g on ties
        int64_t best = -1;
        for (int64_t g = 0; g < G; ++g)
          if (!kept[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
        kept[best] = true;
      }
      for (int64_t e = 0; e < E; ++e) taken[e] = e / Eg >= G || !kept[e / Eg];
    }
    // Selection: K rounds of "largest unchosen s + b", strict > keeps the lower index on ties.
    for (int64_t k = 0; k < K; ++k) {
      int64_t best = -1;
      T best_key = 0;
      for (int64_t e = 0; e < E; ++e) {
        if (taken[e]) continue;
        T key = key_of(e);
        if (best < 0 || key > best_key) best = e, best_key = key;
      }
      taken[best] = true;
      topk_idx[n * K + k] = int32_t(best);
    }
    T denom = 0;
    for (int64_t k = 0; k < K; ++k) denom += s[topk_idx[n * K + k]];
    for (int64_t k = 0; k < K; ++k) {
      T g = s[topk_idx[n * K + k]];
      if (spec.norm_topk_prob) g = g / denom;
      topk_w[n * K + k] = g * T(spec.routed_scaling_factor);
    }
  }
}

inline void router_counts_ref(int64_t* load, int64_t* seq_load, const int32_t* topk_idx,
                              int64_t B, int64_t T, int64_t E, int64_t K) {
  for (int64_t e = 0; e < E; ++e) {
    load[e] = 0;
    for (int64_t b = 0; b < B; ++b) {
      int64_t c = 0;
      for (int64_t i = b * T * K; i < (b + 1) * T * K; ++i) c += topk_idx[i] == e;
      seq_load[b * E + e] = c;
      load[e] += c;
    }
  }
}

inline int64_t route_plan_ref(int32_t* slot_row, int64_t* expert_count, int64_t* offsets,
                              const int32_t* topk_idx, int64_t N, int64_t E, int64_t K,
                              int64_t capacity, const int64_t* taken = nullptr) {
  int64_t row = 0, dropped = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {  // expert by expert, tokens in order
    int64_t seen = taken ? taken[e] : 0;
    for (int64_t i = 0; i < N * K; ++i) {
      if (topk_idx[i] != e) continue;
      if (capacity > 0 && seen >= capacity) {
        slot_row[i] = -1;
        ++dropped;
      } else {
        slot_row[i] = int32_t(row++);
      }
      ++seen;
    }
    offsets[e + 1] = row;
    expert_count[e] = row - offsets[e];
  }
  return dropped;
}

template <class T>
RouterLosses router_losses_ref(const T* logits, const T* scores, const int64_t* load,
                               const int64_t* seq_load, int64_t B, int64_t Tn,
                               const RouterSpec& spec, const RouterLossCoefs& coefs) {
  const int64_t E = spec.E, K = spec.K, N = B * Tn;
  RouterLosses out;
  // balance(first, count, f_e counts): sum_e f_e * P_e over tokens [first, first+count)
  auto balance = [&](int64_t first, int64_t count, const std::vector<T>& cnt) {
    T total = 0;
    for (int64_t e = 0; e < E; ++e) {
      T P = 0;
      for (int64_t n = first; n < first + count; ++n) {
        T sum = 0;
        for (int64_t j = 0; j < E; ++j) sum += scores[n * E + j];
        P += scores[n * E + e] / sum;
      }
      P /= T(count);
      T f = T(E) / T(K * count) * cnt[e];
      total += f * P;
    }
    return total;
  };
  std::vector<T> counts(E);
  if (coefs.aux_alpha != 0) {
    for (int64_t e = 0; e < E; ++e) counts[e] = T(load[e]) * T(coefs.load_scale);
    out.aux = coefs.aux_alpha * double(balance(0, N, counts));
  }
  if (coefs.seq_aux_alpha != 0) {
    T sum = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t e = 0; e < E; ++e) counts[e] = T(seq_load[b * E + e]);
      sum += balance(b * Tn, Tn, counts);
    }
    out.seq_aux = coefs.seq_aux_alpha * double(sum / T(B));
  }
  if (coefs.z_loss_coef != 0) {
    T sum = 0;
    for (int64_t n = 0; n < N; ++n) {
      T l = ref_detail::logsumexp(logits + n * E, E);
      sum += l * l;
    }
    out.z = coefs.z_loss_coef * double(sum / T(N));
  }
  return out;
}

template <class T>
void router_backward_ref(T* dz, const T* dgate, const T* logits, const T* scores,
                         const int32_t* topk_idx, const T* topk_w, const int64_t* load,
                         const int64_t* seq_load, int64_t B, int64_t Tn, const RouterSpec& spec,
                         const RouterLossCoefs& coefs) {
  const int64_t E = spec.E, K = spec.K, N = B * Tn;
  const T c = T(spec.routed_scaling_factor);
  std::vector<T> ds(E), dp(E);
  for (int64_t n = 0; n < N; ++n) {
    const T* s = scores + n * E;
    const T* dg = dgate + n * K;
    const T* g = topk_w + n * K;
    const int32_t* idx = topk_idx + n * K;
    for (int64_t e = 0; e < E; ++e) ds[e] = 0;
    // Gates: g_k = c * s_k / Z (Z = sum of the K selected scores, or 1).
    if (spec.norm_topk_prob) {
      T Z = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) Z += s[idx[k]], dot += dg[k] * g[k];
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += (c * dg[k] - dot) / Z;
    } else {
      for (int64_t k = 0; k < K; ++k) ds[idx[k]] += c * dg[k];
    }
    // Balance terms through p = s / sum(s): dL/dp_e = alpha f_e / N + seq_alpha f^b_e / (B T).
    if (coefs.aux_alpha != 0 || coefs.seq_aux_alpha != 0) {
      const int64_t b = n / Tn;
      for (int64_t e = 0; e < E; ++e) {
        T f = T(E) / T(K * N) * T(load[e]) * T(coefs.load_scale);
        T fb = T(E) / T(K * Tn) * T(seq_load[b * E + e]);
        dp[e] = T(coefs.aux_alpha) * f / T(N) + T(coefs.seq_aux_alpha) * fb / T(B * Tn);
      }
      T sum = 0, dot = 0;
      for (int64_t e = 0; e < E; ++e) sum += s[e];
      for (int64_t e = 0; e < E; ++e) dot += dp[e] * s[e] / sum;
      for (int64_t e = 0; e < E; ++e) ds[e] += (dp[e] - dot) / sum;
    }
    T* d = dz + n * E;
    if (spec.scoring == ScoringFunc::kSigmoid) {
      for (int64_t e = 0; e < E; ++e) d[e] = ds[e] * s[e] * (T(1) - s[e]);
    } else {
      T dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += s[e] * ds[e];
      for (int64_t e = 0; e < E; ++e) d[e] = s[e] * (ds[e] - dot);
    }
    // z-loss: d/dz coef/N * lse^2 = coef/N * 2 lse * softmax(z).
    if (coefs.z_loss_coef != 0) {
      const T* z = logits + n * E;
      T l = ref_detail::logsumexp(z, E);
      for (int64_t e = 0; e < E; ++e)
        d[e] += T(coefs.z_loss_coef) / T(N) * T(2) * l * std::exp(z[e] - l);
    }
  }
}

template <class T>
void permute_ref(T* sorted_x, const T* x, const int32_t* slot_row, int64_t N, int64_t K,
                 int64_t D) {
  for (int64_t i = 0; i < N * K; ++i) {
    if (slot_row[i] < 0) continue;
    for (int64_t d = 0; d < D; ++d) sorted_x[slot_row[i] * D + d] = x[(i / K) * D + d];
  }
}

template <class T>
void permute_backward_ref(T* dx, const T* dsorted_x, const int32_t* slot_row, int64_t N,
                          int64_t K, int64_t D) {
  for (int64_t i = 0; i < N * D; ++i) dx[i] = 0;
  for (int64_t i = 0; i < N * K; ++i) {
    if (slot_row[i] < 0) continue;
    for (int64_t d = 0; d < D; ++d) dx[(i / K) * D + d] += dsorted_x[slot_row[i] * D + d];
  }
}

template <class T>
void unpermute_weighted_ref(T* y, const T* sorted_y, const T* topk_w, const int32_t* slot_row,
                            int64_t N, int64_t K, int64_t D) {
  for (int64_t i = 0; i < N * K; ++i) {
    if (slot_row[i] < 0) continue;
    for (int64_t d = 0; d < D; ++d) y[(i / K) * D + d] += topk_w[i] * sorted_y[slot_row[i] * D + d];
  }
}

template <class T>
void unpermute_weighted_backward_ref(T* dsorted_y, T* dgate, const T* dy, const T* sorted_y,
                                     const T* topk_w, const int32_t* slot_row, int64_t N,
                                     int64_t K, int64_t D) {
  for (int64_t i = 0; i < N * K; ++i) {
    dgate[i] = 0;
    if (slot_row[i] < 0) continue;
    const T* dyn = dy + (i / K) * D;
    for (int64_t d = 0; d < D; ++d) {
      dgate[i] += dyn[d] * sorted_y[slot_row[i] * D + d];
      dsorted_y[slot_row[i] * D + d] = topk_w[i] * dyn[d];
    }
  }
}

}  // namespace moe::cpu
