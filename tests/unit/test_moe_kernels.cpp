// MoE routing kernels: fast vs *_ref (float), finite-difference gradient checks of the *_ref
// backward kernels in double, tie-breaking, capacity and thread-count independence.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
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

template <class A, class B>
void expect_close(const std::vector<A>& got, const std::vector<B>& want, double atol, double rtol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t worst = 0;
  double worst_err = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double want_i = double(want[i]);
    const double err = std::abs(double(got[i]) - want_i) - rtol * std::abs(want_i);
    if (err > worst_err) worst_err = err, worst = i;
  }
  EXPECT_LE(worst_err, atol) << what << ": worst at " << worst << " got " << got[worst]
                             << " want " << want[worst];
}

struct RouterCase {
  ScoringFunc scoring;
  bool norm;
  int64_t E, K;
};

RouterSpec spec_of(const RouterCase& rc, double scaling) {
  RouterSpec s;
  s.E = rc.E, s.K = rc.K, s.scoring = rc.scoring, s.norm_topk_prob = rc.norm;
  s.routed_scaling_factor = scaling;
  return s;
}

const RouterCase kCases[] = {{ScoringFunc::kSoftmax, false, 8, 2},
                             {ScoringFunc::kSoftmax, true, 8, 2},
                             {ScoringFunc::kSigmoid, false, 16, 4},
                             {ScoringFunc::kSigmoid, true, 16, 4}};

// ---- Router forward ----------------------------------------------------------------------

TEST(MoeKernels, RouterForwardMatchesRef) {
  const int64_t N = 173;
  for (const RouterCase& rc : kCases) {
    const RouterSpec spec = spec_of(rc, 2.5);
    auto z = randn<float>(size_t(N * rc.E), 1, 2.0);
    auto bias = randn<float>(size_t(rc.E), 2, 0.1);
    std::vector<float> s(z.size()), w(size_t(N * rc.K)), s_ref(s), w_ref(w);
    std::vector<int32_t> idx(w.size()), idx_ref(w.size());
    router_forward(s.data(), idx.data(), w.data(), z.data(), bias.data(), N, spec);
    router_forward_ref(s_ref.data(), idx_ref.data(), w_ref.data(), z.data(), bias.data(), N,
                       spec);
    expect_close(s, s_ref, 1e-7, 1e-6, "scores");
    EXPECT_EQ(idx, idx_ref);
    expect_close(w, w_ref, 1e-7, 1e-6, "gate weights");
    // Selected experts are in descending s + b order.
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 1; k < rc.K; ++k) {
        const int64_t a = idx[n * rc.K + k - 1], b = idx[n * rc.K + k];
        EXPECT_GE(s[n * rc.E + a] + bias[a], s[n * rc.E + b] + bias[b]);
      }
  }
}

TEST(MoeKernels, RouterTopkTiesGoToLowerIndex) {
  // Equal logits and a bias that makes experts 5 and 2 tie above the rest, then 1, 3 tie.
  const int64_t E = 6, K = 4;
  RouterSpec spec;
  spec.E = E, spec.K = K;
  std::vector<float> z(E, 0.0f), bias = {0.0f, 0.5f, 1.0f, 0.5f, 0.0f, 1.0f};
  std::vector<float> s(E), w(K);
  std::vector<int32_t> idx(K), idx_ref(K);
  router_forward(s.data(), idx.data(), w.data(), z.data(), bias.data(), 1, spec);
  router_forward_ref(s.data(), idx_ref.data(), w.data(), z.data(), bias.data(), 1, spec);
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 5, 1, 3}));
  EXPECT_EQ(idx_ref, idx);
  // No bias: all equal -> experts 0..K-1.
  router_forward(s.data(), idx.data(), w.data(), z.data(), nullptr, 1, spec);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_NEAR(w[0], 1.0f / 6.0f, 1e-7);
}

TEST(MoeKernels, CountsAndPlanMatchRef) {
  const int64_t B = 3, T = 37, N = B * T, E = 8, K = 2;
  RouterSpec spec;
  spec.E = E, spec.K = K;
  auto z = randn<float>(size_t(N * E), 3, 1.5);
  std::vector<float> bias(E, 0.0f), s(z.size()), w(size_t(N * K));
  bias[3] = 0.5f;  // skew the load so capacity bites on expert 3
  std::vector<int32_t> idx(size_t(N * K));
  router_forward(s.data(), idx.data(), w.data(), z.data(), bias.data(), N, spec);

  std::vector<int64_t> load(E), seq_load(B * E), load_ref(E), seq_load_ref(B * E);
  router_counts(load.data(), seq_load.data(), idx.data(), B, T, E, K);
  router_counts_ref(load_ref.data(), seq_load_ref.data(), idx.data(), B, T, E, K);
  EXPECT_EQ(load, load_ref);
  EXPECT_EQ(seq_load, seq_load_ref);
  EXPECT_EQ(load[3], N);

  for (double c : {0.0, 1.0, 1.25}) {
    const int64_t cap = expert_capacity(c, N, K, E);
    std::vector<int32_t> row(size_t(N * K)), row_ref(row);
    std::vector<int64_t> cnt(E), cnt_ref(E), off(E + 1), off_ref(E + 1);
    const int64_t dropped =
        route_plan(row.data(), cnt.data(), off.data(), idx.data(), N, E, K, cap);
    const int64_t dropped_ref =
        route_plan_ref(row_ref.data(), cnt_ref.data(), off_ref.data(), idx.data(), N, E, K, cap);
    EXPECT_EQ(row, row_ref) << "c=" << c;
    EXPECT_EQ(cnt, cnt_ref);
    EXPECT_EQ(off, off_ref);
    EXPECT_EQ(dropped, dropped_ref);
    EXPECT_EQ(off[E] + dropped, N * K);
    if (c == 0) {
      EXPECT_EQ(dropped, 0);
    }
    if (c == 1.0) {
      EXPECT_EQ(cap, (N * K + E - 1) / E);
      EXPECT_GE(dropped, N - cap);  // expert 3 is chosen by every token
    }
    // Kept rows are a permutation of [0, M), in expert order.
    std::vector<int> seen(size_t(off[E]), 0);
    for (int64_t i = 0; i < N * K; ++i) {
      if (row[i] < 0) continue;
      ++seen[row[i]];
      EXPECT_GE(row[i], off[idx[i]]);
      EXPECT_LT(row[i], off[idx[i] + 1]);
    }
    for (int v : seen) EXPECT_EQ(v, 1);
  }
}

TEST(MoeKernels, CapacityRoundsUpInDouble) {
  EXPECT_EQ(expert_capacity(0.0, 100, 2, 8), 0);
  EXPECT_EQ(expert_capacity(1.0, 100, 2, 8), 25);
  EXPECT_EQ(expert_capacity(1.25, 100, 2, 8), 32);  // 31.25 -> 32
  EXPECT_EQ(expert_capacity(1.0, 9, 1, 4), 3);      // 2.25 -> 3
}

// ---- Router losses and backward: fast vs ref ---------------------------------------------

struct RouterData {
  int64_t B, T, N;
  RouterSpec spec;
  std::vector<float> z, bias, s, w;
  std::vector<int32_t> idx;
  std::vector<int64_t> load, seq_load;
};

RouterData make_router_data(const RouterCase& rc, int64_t B, int64_t T, uint32_t seed) {
  RouterData d{B, T, B * T, spec_of(rc, 2.5), {}, {}, {}, {}, {}, {}, {}};
  d.z = randn<float>(size_t(d.N * rc.E), seed, 1.5);
  d.bias = randn<float>(size_t(rc.E), seed + 1, 0.2);
  d.s.resize(d.z.size()), d.w.resize(size_t(d.N * rc.K)), d.idx.resize(d.w.size());
  router_forward(d.s.data(), d.idx.data(), d.w.data(), d.z.data(), d.bias.data(), d.N, d.spec);
  d.load.resize(size_t(rc.E)), d.seq_load.resize(size_t(B * rc.E));
  router_counts(d.load.data(), d.seq_load.data(), d.idx.data(), B, T, rc.E, rc.K);
  return d;
}

TEST(MoeKernels, RouterLossesMatchRef) {
  const RouterLossCoefs coefs{0.01, 0.003, 0.001};
  for (const RouterCase& rc : kCases) {
    RouterData d = make_router_data(rc, 3, 29, 11);
    const RouterLosses got = router_losses(d.z.data(), d.s.data(), d.load.data(),
                                           d.seq_load.data(), d.B, d.T, d.spec, coefs);
    const RouterLosses want = router_losses_ref(d.z.data(), d.s.data(), d.load.data(),
                                                d.seq_load.data(), d.B, d.T, d.spec, coefs);
    EXPECT_NEAR(got.aux, want.aux, 1e-5 * std::abs(want.aux));
    EXPECT_NEAR(got.seq_aux, want.seq_aux, 1e-5 * std::abs(want.seq_aux));
    EXPECT_NEAR(got.z, want.z, 1e-5 * std::abs(want.z));
    EXPECT_GT(got.aux, 0.0);
    EXPECT_GT(got.seq_aux, 0.0);
    EXPECT_GT(got.z, 0.0);
    const RouterLosses off = router_losses(d.z.data(), d.s.data(), d.load.data(),
                                           d.seq_load.data(), d.B, d.T, d.spec, {});
    EXPECT_EQ(off.aux + off.seq_aux + off.z, 0.0);
  }
}

TEST(MoeKernels, RouterBackwardMatchesRef) {
  const RouterLossCoefs coefs{0.01, 0.003, 0.001};
  for (const RouterCase& rc : kCases) {
    RouterData d = make_router_data(rc, 2, 41, 21);
    auto dgate = randn<float>(d.w.size(), 22);
    dgate[3] = 0.0f;  // as for a dropped slot
    std::vector<float> dz(d.z.size()), dz_ref(d.z.size());
    router_backward(dz.data(), dgate.data(), d.z.data(), d.s.data(), d.idx.data(), d.w.data(),
                    d.load.data(), d.seq_load.data(), d.B, d.T, d.spec, coefs);
    router_backward_ref(dz_ref.data(), dgate.data(), d.z.data(), d.s.data(), d.idx.data(),
                        d.w.data(), d.load.data(), d.seq_load.data(), d.B, d.T, d.spec, coefs);
    expect_close(dz, dz_ref, 1e-6, 1e-4, "dz");
  }
}

// ---- Router backward: finite differences in double ---------------------------------------
// L(z) = sum_{n,k} r_{nk} g_{nk}(z) + aux(z) + seq_aux(z) + z_loss(z), selection held fixed.

TEST(MoeKernels, RouterBackwardGradcheckDouble) {
  const int64_t B = 2, T = 7, N = B * T;
  const RouterLossCoefs coefs{0.3, 0.2, 0.05};  // large, so their gradients matter
  for (const RouterCase& rc : kCases) {
    const RouterSpec spec = spec_of(rc, 2.5);
    const int64_t E = rc.E, K = rc.K;
    auto z = randn<double>(size_t(N * E), 31, 1.5);
    auto bias = randn<double>(size_t(E), 32, 0.3);
    auto r = randn<double>(size_t(N * K), 33);
    std::vector<double> s(z.size()), w(size_t(N * K));
    std::vector<int32_t> idx(w.size()), idx2(w.size());
    router_forward_ref(s.data(), idx.data(), w.data(), z.data(), bias.data(), N, spec);
    std::vector<int64_t> load(E), seq_load(B * E);
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
    const double eps = 1e-6;
    double max_err = 0, max_grad = 0;
    for (size_t i = 0; i < z.size(); ++i) {
      auto zp = z, zm = z;
      zp[i] += eps, zm[i] -= eps;
      const double fd = (loss(zp) - loss(zm)) / (2 * eps);
      max_err = std::max(max_err, std::abs(fd - dz[i]));
      max_grad = std::max(max_grad, std::abs(fd));
    }
    EXPECT_LT(max_err, 1e-7 * std::max(1.0, max_grad))
        << "scoring=" << int(rc.scoring) << " norm=" << rc.norm;
    EXPECT_GT(max_grad, 1e-3);
  }
}

// The aux terms alone (no gates) must also match: checks the p = s / sum(s) path separately.
TEST(MoeKernels, RouterAuxOnlyGradcheckDouble) {
  const int64_t B = 3, T = 5, N = B * T, E = 8, K = 2;
  for (ScoringFunc f : {ScoringFunc::kSoftmax, ScoringFunc::kSigmoid})
    for (int term = 0; term < 3; ++term) {
      RouterSpec spec;
      spec.E = E, spec.K = K, spec.scoring = f;
      RouterLossCoefs coefs;
      (term == 0 ? coefs.aux_alpha : term == 1 ? coefs.seq_aux_alpha : coefs.z_loss_coef) = 0.7;
      auto z = randn<double>(size_t(N * E), 41 + term, 1.0);
      std::vector<double> s(z.size()), w(size_t(N * K)), zeros(w.size(), 0.0);
      std::vector<int32_t> idx(w.size());
      const double* no_bias = nullptr;
      router_forward_ref(s.data(), idx.data(), w.data(), z.data(), no_bias, N, spec);
      std::vector<int64_t> load(E), seq_load(B * E);
      router_counts_ref(load.data(), seq_load.data(), idx.data(), B, T, E, K);
      auto loss = [&](const std::vector<double>& zz) {
        std::vector<double> ss(zz.size());
        for (int64_t n = 0; n < N; ++n) ref_detail::scores_of(&ss[n * E], &zz[n * E], E, f);
        const RouterLosses l = router_losses_ref(zz.data(), ss.data(), load.data(),
                                                 seq_load.data(), B, T, spec, coefs);
        return l.aux + l.seq_aux + l.z;
      };
      std::vector<double> dz(z.size());
      router_backward_ref(dz.data(), zeros.data(), z.data(), s.data(), idx.data(), w.data(),
                          load.data(), seq_load.data(), B, T, spec, coefs);
      double max_err = 0, max_grad = 0;
      for (size_t i = 0; i < z.size(); ++i) {
        auto zp = z, zm = z;
        zp[i] += 1e-6, zm[i] -= 1e-6;
        const double fd = (loss(zp) - loss(zm)) / 2e-6;
        max_err = std::max(max_err, std::abs(fd - dz[i]));
        max_grad = std::max(max_grad, std::abs(fd));
      }
      EXPECT_LT(max_err, 1e-8 * std::max(1.0, max_grad)) << "term " << term;
      EXPECT_GT(max_grad, 1e-5) << "term " << term;
    }
}

// ---- Permute / unpermute -----------------------------------------------------------------

struct PlanData {
  int64_t N, K, E, D, M;
  std::vector<int32_t> idx, row;
};

PlanData make_plan(int64_t N, int64_t K, int64_t E, int64_t D, double capacity, uint32_t seed) {
  PlanData p{N, K, E, D, 0, {}, {}};
  p.idx.resize(size_t(N * K)), p.row.resize(size_t(N * K));
  std::mt19937 gen(seed);
  for (int64_t n = 0; n < N; ++n) {  // K distinct experts per token
    std::vector<int32_t> perm(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) perm[e] = int32_t(e);
    std::shuffle(perm.begin(), perm.end(), gen);
    for (int64_t k = 0; k < K; ++k) p.idx[n * K + k] = perm[k];
  }
  std::vector<int64_t> cnt(E), off(E + 1);
  route_plan(p.row.data(), cnt.data(), off.data(), p.idx.data(), N, E, K,
             expert_capacity(capacity, N, K, E));
  p.M = off[E];
  return p;
}

TEST(MoeKernels, PermuteUnpermuteMatchRef) {
  PlanData p = make_plan(97, 3, 6, 70, 0.8, 5);  // with drops
  ASSERT_LT(p.M, p.N * p.K);
  auto x = randn<float>(size_t(p.N * p.D), 6);
  auto w = randn<float>(size_t(p.N * p.K), 7);
  auto sy = randn<float>(size_t(p.M * p.D), 8);
  auto dy = randn<float>(size_t(p.N * p.D), 9);

  std::vector<float> sx(size_t(p.M * p.D)), sx_ref(sx.size());
  permute(sx.data(), x.data(), p.row.data(), p.N, p.K, p.D);
  permute_ref(sx_ref.data(), x.data(), p.row.data(), p.N, p.K, p.D);
  EXPECT_EQ(sx, sx_ref);

  std::vector<float> dx(x.size(), 7.0f), dx_ref(x.size());
  permute_backward(dx.data(), sy.data(), p.row.data(), p.N, p.K, p.D);
  permute_backward_ref(dx_ref.data(), sy.data(), p.row.data(), p.N, p.K, p.D);
  expect_close(dx, dx_ref, 1e-6, 1e-6, "permute_backward");

  std::vector<float> y = dy, y_ref = dy;  // accumulates
  unpermute_weighted(y.data(), sy.data(), w.data(), p.row.data(), p.N, p.K, p.D);
  unpermute_weighted_ref(y_ref.data(), sy.data(), w.data(), p.row.data(), p.N, p.K, p.D);
  expect_close(y, y_ref, 1e-5, 1e-5, "unpermute_weighted");

  std::vector<float> dsy(sy.size()), dsy_ref(sy.size()), dg(w.size(), 3.0f), dg_ref(w.size());
  unpermute_weighted_backward(dsy.data(), dg.data(), dy.data(), sy.data(), w.data(), p.row.data(),
                              p.N, p.K, p.D);
  unpermute_weighted_backward_ref(dsy_ref.data(), dg_ref.data(), dy.data(), sy.data(), w.data(),
                                  p.row.data(), p.N, p.K, p.D);
  expect_close(dsy, dsy_ref, 0, 0, "d sorted_y");
  expect_close(dg, dg_ref, 1e-5, 1e-5, "d gate");
  for (size_t i = 0; i < p.row.size(); ++i)
    if (p.row[i] < 0) {
      EXPECT_EQ(dg[i], 0.0f);
    }
}

// L = <u, permute(x)> + <r, unpermute_weighted(sorted_y, w)>, gradients in x, sorted_y, w.
TEST(MoeKernels, PermuteUnpermuteGradcheckDouble) {
  PlanData p = make_plan(9, 2, 4, 5, 0.75, 12);
  ASSERT_LT(p.M, p.N * p.K);
  auto x = randn<double>(size_t(p.N * p.D), 13);
  auto w = randn<double>(size_t(p.N * p.K), 14);
  auto sy = randn<double>(size_t(p.M * p.D), 15);
  auto u = randn<double>(size_t(p.M * p.D), 16);
  auto r = randn<double>(size_t(p.N * p.D), 17);
  auto loss = [&](const std::vector<double>& xx, const std::vector<double>& syy,
                  const std::vector<double>& ww) {
    std::vector<double> sx(size_t(p.M * p.D)), y(size_t(p.N * p.D), 0.0);
    permute_ref(sx.data(), xx.data(), p.row.data(), p.N, p.K, p.D);
    unpermute_weighted_ref(y.data(), syy.data(), ww.data(), p.row.data(), p.N, p.K, p.D);
    double L = 0;
    for (size_t i = 0; i < sx.size(); ++i) L += u[i] * sx[i];
    for (size_t i = 0; i < y.size(); ++i) L += r[i] * y[i];
    return L;
  };
  std::vector<double> dx(x.size()), dsy(sy.size()), dw(w.size());
  permute_backward_ref(dx.data(), u.data(), p.row.data(), p.N, p.K, p.D);
  unpermute_weighted_backward_ref(dsy.data(), dw.data(), r.data(), sy.data(), w.data(),
                                  p.row.data(), p.N, p.K, p.D);
  auto check = [&](std::vector<double>& v, const std::vector<double>& grad, const char* what) {
    for (size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + 1e-6;
      const double lp = loss(x, sy, w);
      v[i] = keep - 1e-6;
      const double lm = loss(x, sy, w);
      v[i] = keep;
      EXPECT_NEAR((lp - lm) / 2e-6, grad[i], 1e-8) << what << " " << i;
    }
  };
  check(x, dx, "x");
  check(sy, dsy, "sorted_y");
  check(w, dw, "gate");
}

// ---- Thread count independence -----------------------------------------------------------

TEST(MoeKernels, ResultsDoNotDependOnThreadCount) {
  const RouterCase rc{ScoringFunc::kSigmoid, true, 16, 4};
  const RouterLossCoefs coefs{0.01, 0.003, 0.001};
  PlanData p = make_plan(301, 4, 16, 96, 0.0, 51);
  auto dy = randn<float>(size_t(p.N * p.D), 52);
  auto sy = randn<float>(size_t(p.M * p.D), 53);
  auto w = randn<float>(size_t(p.N * p.K), 54);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    RouterData d = make_router_data(rc, 7, 43, 55);
    const auto dgate = randn<float>(d.w.size(), 56);
    std::vector<float> dz(d.z.size()), dsy(sy.size()), dg(w.size()), dx(dy.size());
    router_backward(dz.data(), dgate.data(), d.z.data(), d.s.data(), d.idx.data(), d.w.data(),
                    d.load.data(), d.seq_load.data(), d.B, d.T, d.spec, coefs);
    unpermute_weighted_backward(dsy.data(), dg.data(), dy.data(), sy.data(), w.data(),
                                p.row.data(), p.N, p.K, p.D);
    permute_backward(dx.data(), dsy.data(), p.row.data(), p.N, p.K, p.D);
    omp_set_num_threads(saved);
    std::vector<float> all = d.s;
    for (auto* v : {&d.w, &dz, &dsy, &dg, &dx}) all.insert(all.end(), v->begin(), v->end());
    return all;
  };
  const std::vector<float> one = run(1), three = run(3);
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moe::cpu
