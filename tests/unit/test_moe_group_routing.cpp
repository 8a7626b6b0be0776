// Group-limited ("node-limited", DeepSeek-V3) routing in router_forward: fast vs *_ref, a
// property check of the selection against an independent group ranking, tie rules, n_group = 1
// unchanged, and the (unchanged) backward against finite differences with the limit on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/cpu/moe_kernels.h"
#include "kernels/cpu/moe_ref.h"

namespace moe::cpu {
namespace {

template <class T>
std::vector<T> randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = T(dist(gen));
  return v;
}

struct GroupCase {
  ScoringFunc scoring;
  bool norm;
  int64_t E, K, G, TG;  // experts, top-k, n_group, topk_group
};

RouterSpec spec_of(const GroupCase& c) {
  RouterSpec s;
  s.E = c.E, s.K = c.K, s.scoring = c.scoring, s.norm_topk_prob = c.norm;
  s.routed_scaling_factor = 2.5;
  s.n_group = c.G, s.topk_group = c.TG;
  return s;
}

// DeepSeek-V3-like shapes, scaled down: several experts per group, one expert per group
// (a group's score is then its only key), K filling the allowed groups exactly, one group.
const GroupCase kCases[] = {
    {ScoringFunc::kSigmoid, true, 16, 4, 4, 2},  {ScoringFunc::kSoftmax, false, 16, 4, 4, 2},
    {ScoringFunc::kSigmoid, false, 32, 6, 8, 3}, {ScoringFunc::kSoftmax, true, 32, 6, 8, 3},
    {ScoringFunc::kSigmoid, true, 8, 2, 8, 2},   {ScoringFunc::kSoftmax, false, 8, 3, 8, 3},
    {ScoringFunc::kSigmoid, false, 12, 3, 4, 1}, {ScoringFunc::kSoftmax, true, 12, 3, 4, 1},
};

std::string name_of(const GroupCase& c) {
  return std::string(c.scoring == ScoringFunc::kSigmoid ? "sigmoid" : "softmax") + " E=" +
         std::to_string(c.E) + " K=" + std::to_string(c.K) + " n_group=" + std::to_string(c.G) +
         " topk_group=" + std::to_string(c.TG);
}

struct Routed {
  std::vector<float> s, w;
  std::vector<int32_t> idx;
};

Routed route(const RouterSpec& spec, const std::vector<float>& z, const std::vector<float>& bias,
             int64_t N, bool ref) {
  Routed r{std::vector<float>(z.size()), std::vector<float>(size_t(N * spec.K)),
           std::vector<int32_t>(size_t(N * spec.K))};
  if (ref)
    router_forward_ref(r.s.data(), r.idx.data(), r.w.data(), z.data(), bias.data(), N, spec);
  else
    router_forward(r.s.data(), r.idx.data(), r.w.data(), z.data(), bias.data(), N, spec);
  return r;
}

// The checker's own group ranking, written from the words of the spec: a group's score is the
// sum of its two largest s + b (fp32, sorted copy); groups by descending score, ties to the
// lower index; the first topk_group of them.
std::vector<int64_t> best_groups(const float* s, const float* bias, int64_t E, int64_t G,
                                 int64_t TG) {
  const int64_t Eg = E / G;
  std::vector<float> score(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    std::vector<float> keys;
    for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) keys.push_back(s[e] + bias[e]);
    std::sort(keys.begin(), keys.end(), std::greater<float>());
    score[size_t(g)] = Eg == 1 ? keys[0] : keys[0] + keys[1];
  }
  std::vector<int64_t> order(static_cast<size_t>(G));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)]; });
  order.resize(size_t(TG));
  return order;
}

// ---- 1. fast == ref ------------------------------------------------------------------------

TEST(MoeGroupRouting, FastMatchesRef) {
  const int64_t N = 257;
  for (const GroupCase& c : kCases) {
    const RouterSpec spec = spec_of(c);
    const auto z = randn<float>(size_t(N * c.E), 51, 2.0);
    const auto bias = randn<float>(size_t(c.E), 52, 0.1);  // nonzero balancing bias
    const Routed fast = route(spec, z, bias, N, false), ref = route(spec, z, bias, N, true);
    EXPECT_EQ(fast.idx, ref.idx) << name_of(c);
    for (size_t i = 0; i < fast.s.size(); ++i)
      ASSERT_NEAR(fast.s[i], ref.s[i], 1e-7 + 1e-6 * std::fabs(ref.s[i])) << name_of(c);
    for (size_t i = 0; i < fast.w.size(); ++i)
      ASSERT_NEAR(fast.w[i], ref.w[i], 1e-7 + 1e-6 * std::fabs(ref.w[i])) << name_of(c);
    // Gate weights come from the unbiased scores of the selected experts.
    for (int64_t n = 0; n < N && !c.norm; ++n)
      for (int64_t k = 0; k < c.K; ++k)
        ASSERT_FLOAT_EQ(fast.w[n * c.K + k], fast.s[n * c.E + fast.idx[n * c.K + k]] * 2.5f);
  }
}

// ---- 2. the selection obeys the group limit ---------------------------------------------------

TEST(MoeGroupRouting, SelectionStaysInTheBestGroups) {
  const int64_t N = 3000;
  for (const GroupCase& c : kCases) {
    const RouterSpec spec = spec_of(c);
    const int64_t Eg = c.E / c.G;
    const auto z = randn<float>(size_t(N * c.E), 61, 1.5);
    const auto bias = randn<float>(size_t(c.E), 62, 0.2);
    RouterSpec free_spec = spec;
    free_spec.n_group = 1, free_spec.topk_group = 1;
    const Routed unlimited = route(free_spec, z, bias, N, false);
    for (bool ref : {false, true}) {
      const Routed r = route(spec, z, bias, N, ref);
      int64_t limited = 0;  // tokens whose selection the limit changed
      for (int64_t n = 0; n < N; ++n) {
        const float* s = &r.s[size_t(n * c.E)];
        const int32_t* idx = &r.idx[size_t(n * c.K)];
        const std::vector<int64_t> best = best_groups(s, bias.data(), c.E, c.G, c.TG);
        const std::set<int64_t> allowed(best.begin(), best.end());
        std::set<int64_t> used;
        for (int64_t k = 0; k < c.K; ++k) used.insert(idx[k] / Eg);
        ASSERT_LE(int64_t(used.size()), c.TG) << name_of(c) << " token " << n;
        for (int64_t g : used)
          ASSERT_TRUE(allowed.count(g)) << name_of(c) << " token " << n << ": expert of group "
                                        << g << " chosen, not among the best groups";
        // Inside the allowed groups: the K largest s + b, in descending order, ties to the
        // lower index (a stable sort of the allowed experts).
        std::vector<int64_t> cand;
        for (int64_t e = 0; e < c.E; ++e)
          if (allowed.count(e / Eg)) cand.push_back(e);
        std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) {
          return s[a] + bias[size_t(a)] > s[b] + bias[size_t(b)];
        });
        for (int64_t k = 0; k < c.K; ++k)
          ASSERT_EQ(idx[k], cand[size_t(k)]) << name_of(c) << " token " << n << " slot " << k;
        limited += !std::equal(idx, idx + c.K, &unlimited.idx[size_t(n * c.K)]);
      }
      if (!ref) printf("  %s: the limit changed %lld of %lld selections\n", name_of(c).c_str(),
                       (long long)limited, (long long)N);
      // The checks above must be able to fail: the limit changes many selections here. With
      // one expert per group it cannot: the best K <= topk_group groups hold the best K experts.
      if (Eg > 1) {
        EXPECT_GT(limited, N / 10) << name_of(c) << (ref ? " (ref)" : " (fast)");
      } else {
        EXPECT_EQ(limited, 0) << name_of(c) << (ref ? " (ref)" : " (fast)");
      }
    }
  }
}

// ---- tie rules ------------------------------------------------------------------------------

TEST(MoeGroupRouting, TiesGoToTheLowerGroupThenTheLowerExpert) {
  // E = 8 in 4 groups of 2, K = 2, topk_group = 2; equal logits (s = 0.5), so s + b orders
  // by b. Group scores: g0 0.6+0.6, g1 0.8+0.5, g2 0.55+0.5, g3 0.8+0.5 (the same fp32 sum as
  // g1, built from the same values).
  RouterSpec spec;
  spec.E = 8, spec.K = 2, spec.n_group = 4, spec.topk_group = 2;
  spec.scoring = ScoringFunc::kSigmoid;
  const std::vector<float> z(8, 0.0f);
  const std::vector<float> bias = {0.1f, 0.1f, 0.3f, 0.0f, 0.05f, 0.0f, 0.3f, 0.0f};
  // g1 == g3 are the best two: experts 2, 3, 6, 7 remain, and 2 and 6 tie on top.
  for (bool ref : {false, true}) {
    const Routed r = route(spec, z, bias, 1, ref);
    EXPECT_EQ(r.idx, (std::vector<int32_t>{2, 6})) << (ref ? "ref" : "fast");
  }
  // topk_group = 1: only g1, whose experts 2 and 3 are taken even though expert 6 (g3) ties
  // expert 2 and beats expert 3.
  spec.topk_group = 1;
  for (bool ref : {false, true}) {
    const Routed r = route(spec, z, bias, 1, ref);
    EXPECT_EQ(r.idx, (std::vector<int32_t>{2, 3})) << (ref ? "ref" : "fast");
  }
  // All keys equal: groups 0 and 1, experts 0 and 1.
  spec.topk_group = 2, spec.K = 3;
  const std::vector<float> flat(8, 0.0f);
  for (bool ref : {false, true}) {
    const Routed r = route(spec, z, flat, 1, ref);
    EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 1, 2})) << (ref ? "ref" : "fast");
  }
}

TEST(MoeGroupRouting, GroupScoreIsTheSumOfTheTopTwo) {
  // Keys s + b: group 0 {1.4, 0.5, 0.8, 0.8}, group 1 {1.2, 1.2, 0.5, 0.5}. By its largest key
  // (or by the sum of all four: 3.5 vs 3.4) group 0 would win; by the top-2 sum (2.2 vs 2.4)
  // group 1 does, so K = 1 takes expert 4 although expert 0 holds the largest key.
  RouterSpec spec;
  spec.E = 8, spec.K = 1, spec.n_group = 2, spec.topk_group = 1;
  spec.scoring = ScoringFunc::kSigmoid;
  const std::vector<float> z(8, 0.0f);  // s = 0.5 everywhere
  const std::vector<float> bias = {0.9f, 0.0f, 0.3f, 0.3f, 0.7f, 0.7f, 0.0f, 0.0f};
  for (bool ref : {false, true}) {
    const Routed r = route(spec, z, bias, 1, ref);
    EXPECT_EQ(r.idx, (std::vector<int32_t>{4})) << (ref ? "ref" : "fast");
  }
}

// ---- 3. n_group = 1 (or topk_group = n_group) is the unlimited routing ---------------------

TEST(MoeGroupRouting, NoLimitIsUnchanged) {
  const int64_t N = 301;
  for (const GroupCase& c : kCases) {
    RouterSpec base = spec_of(c);
    base.n_group = 1, base.topk_group = 1;
    const auto z = randn<float>(size_t(N * c.E), 71, 2.0);
    const auto bias = randn<float>(size_t(c.E), 72, 0.1);
    const Routed want = route(base, z, bias, N, false);
    // The selection as before: a stable descending sort of s + b, first K.
    for (int64_t n = 0; n < N; ++n) {
      const float* s = &want.s[size_t(n * c.E)];
      std::vector<int32_t> order(static_cast<size_t>(c.E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return s[a] + bias[size_t(a)] > s[b] + bias[size_t(b)];
      });
      ASSERT_TRUE(std::equal(order.begin(), order.begin() + c.K, &want.idx[size_t(n * c.K)]))
          << name_of(c) << " token " << n;
    }
    RouterSpec all = spec_of(c);
    all.topk_group = all.n_group;  // every group kept
    for (const RouterSpec& spec : {base, all})
      for (bool ref : {false, true}) {
        const Routed got = route(spec, z, bias, N, ref);
        EXPECT_EQ(got.idx, want.idx) << name_of(c) << " n_group=" << spec.n_group;
        if (!ref) {  // the fast kernel: bitwise the same
          EXPECT_EQ(got.s, want.s);
          EXPECT_EQ(got.w, want.w);
        }
      }
  }
}

// ---- backward: unchanged, still the gradient with the limit on ---------------------------

TEST(MoeGroupRouting, BackwardGradcheckDoubleWithGroupLimit) {
  const int64_t B = 2, T = 6, N = B * T;
  const RouterLossCoefs coefs{0.3, 0.2, 0.05};
  for (const GroupCase& c : kCases) {
    const RouterSpec spec = spec_of(c);
    const int64_t E = c.E, K = c.K;
    const auto z = randn<double>(size_t(N * E), 81, 1.5);
    const auto bias = randn<double>(size_t(E), 82, 0.3);
    const auto r = randn<double>(size_t(N * K), 83);
    std::vector<double> s(z.size()), w(size_t(N * K));
    std::vector<int32_t> idx(w.size()), idx2(w.size());
    router_forward_ref(s.data(), idx.data(), w.data(), z.data(), bias.data(), N, spec);
    std::vector<int64_t> load(static_cast<size_t>(E)), seq_load(static_cast<size_t>(B * E));
    router_counts_ref(load.data(), seq_load.data(), idx.data(), B, T, E, K);
    auto loss = [&](const std::vector<double>& zz) {
      std::vector<double> ss(zz.size()), ww(w.size());
      router_forward_ref(ss.data(), idx2.data(), ww.data(), zz.data(), bias.data(), N, spec);
      EXPECT_EQ(idx2, idx) << "selection changed under the finite-difference step";
      double L = 0;
      for (size_t i = 0; i < ww.size(); ++i) L += r[i] * ww[i];
      const RouterLosses l = router_losses_ref(zz.data(), ss.data(), load.data(),
                                               seq_load.data(), B, T, spec, coefs);
      return L + l.aux + l.seq_aux + l.z;
    };
    std::vector<double> dz(z.size());
    router_backward_ref(dz.data(), r.data(), z.data(), s.data(), idx.data(), w.data(),
                        load.data(), seq_load.data(), B, T, spec, coefs);
    double max_err = 0, max_grad = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      auto zp = z, zm = z;
      zp[i] += 1e-6, zm[i] -= 1e-6;
      const double fd = (loss(zp) - loss(zm)) / 2e-6;
      max_err = std::max(max_err, std::abs(fd - dz[i]));
      max_grad = std::max(max_grad, std::abs(fd));
    }
    EXPECT_LT(max_err, 1e-7 * std::max(1.0, max_grad)) << name_of(c);
    EXPECT_GT(max_grad, 1e-3) << name_of(c);

    // The fast backward on a group-limited selection matches the ref in float.
    std::vector<float> zf(z.begin(), z.end()), bf(bias.begin(), bias.end()),
        rf(r.begin(), r.end());
    const Routed fr = route(spec, zf, bf, N, false);
    std::vector<int64_t> lf(static_cast<size_t>(E)), slf(static_cast<size_t>(B * E));
    router_counts(lf.data(), slf.data(), fr.idx.data(), B, T, E, K);
    std::vector<float> dzf(zf.size()), dzr(zf.size());
    router_backward(dzf.data(), rf.data(), zf.data(), fr.s.data(), fr.idx.data(), fr.w.data(),
                    lf.data(), slf.data(), B, T, spec, coefs);
    router_backward_ref(dzr.data(), rf.data(), zf.data(), fr.s.data(), fr.idx.data(),
                        fr.w.data(), lf.data(), slf.data(), B, T, spec, coefs);
    for (size_t i = 0; i < dzf.size(); ++i)
      ASSERT_NEAR(dzf[i], dzr[i], 1e-6 + 1e-4 * std::fabs(dzr[i])) << name_of(c) << " " << i;
  }
}

}  // namespace
}  // namespace moe::cpu
