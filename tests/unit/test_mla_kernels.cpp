// The MLA packing kernels (kernels/cpu/mla.h) against their _ref twins, and the packed GQA
// attention against MLA's attention written out directly (scores over dn + dr dims with the
// shared k_pe, softmax scale 1/sqrt(dn + dr), dv-wide values).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernel_checks.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/mla.h"
#include "kernels/cpu/mla_ref.h"
#include "kernels/cpu/ref.h"

namespace moe::cpu {
namespace {

using testing::close;
using testing::randn;

struct MlaShape {
  int64_t N, H, dn, dr, dv, Da, kpe_stride;
};

TEST(MlaKernels, PackAndUnpackMatchRef) {
  const MlaShape shapes[] = {{7, 3, 6, 4, 8, 10, 12},  // Da = dn + dr (DeepSeek's dv < dqk)
                             {5, 2, 4, 4, 12, 12, 4},  // Da = dv > dqk, k_pe contiguous
                             {3, 4, 0, 2, 2, 3, 2},    // no nope part, padding beyond both
                             {1, 1, 2, 2, 2, 4, 6}};
  uint32_t seed = 1;
  for (const MlaShape& s : shapes) {
    const int64_t dqk = s.dn + s.dr, C = 3 * s.H * s.Da;
    const float q_scale = std::sqrt(float(s.Da) / float(dqk));
    const auto q = randn(s.N * s.H * dqk, seed++), kv = randn(s.N * s.H * (s.dn + s.dv), seed++);
    const auto kpe = randn(s.N * s.kpe_stride, seed++);
    std::vector<float> fast(s.N * C, 7.0f), ref(s.N * C, -7.0f);  // every element overwritten
    mla_pack_qkv(fast.data(), q.data(), kv.data(), kpe.data(), s.kpe_stride, s.N, s.H, s.dn, s.dr,
                 s.dv, s.Da, q_scale);
    mla_pack_qkv_ref<float>(ref.data(), q.data(), kv.data(), kpe.data(), s.kpe_stride, s.N, s.H,
                            s.dn, s.dr, s.dv, s.Da, q_scale);
    EXPECT_TRUE(close(fast, ref, 0, "mla_pack_qkv"));

    const auto dqkv = randn(s.N * C, seed++);
    std::vector<float> dq(q.size(), 5.0f), dkv(kv.size(), 5.0f), dpe(kpe.size(), 5.0f);
    std::vector<float> dq_r(q.size(), -5.0f), dkv_r(kv.size(), -5.0f), dpe_r(kpe.size(), 5.0f);
    mla_unpack_qkv_grad(dq.data(), dkv.data(), dpe.data(), s.kpe_stride, dqkv.data(), s.N, s.H,
                        s.dn, s.dr, s.dv, s.Da, q_scale);
    mla_unpack_qkv_grad_ref<float>(dq_r.data(), dkv_r.data(), dpe_r.data(), s.kpe_stride,
                                   dqkv.data(), s.N, s.H, s.dn, s.dr, s.dv, s.Da, q_scale);
    EXPECT_TRUE(close(dq, dq_r, 0, "mla_unpack dq"));
    EXPECT_TRUE(close(dkv, dkv_r, 0, "mla_unpack dkv"));
    // k_pe's gradient is a sum over heads in the same order; the columns between rows untouched
    EXPECT_TRUE(close(dpe, dpe_r, 0, "mla_unpack dk_pe"));
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t j = s.dr; j < s.kpe_stride; ++j) EXPECT_EQ(dpe[n * s.kpe_stride + j], 5.0f);

    // The adjoint identity <pack(q, kv, kpe), R> = <q, dq> + <kv, dkv> + <kpe, dk_pe>.
    double lhs = 0, rhs = 0;
    for (int64_t i = 0; i < s.N * C; ++i) lhs += double(fast[i]) * dqkv[i];
    for (size_t i = 0; i < q.size(); ++i) rhs += double(q[i]) * dq[i];
    for (size_t i = 0; i < kv.size(); ++i) rhs += double(kv[i]) * dkv[i];
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t j = 0; j < s.dr; ++j)
        rhs += double(kpe[n * s.kpe_stride + j]) * dpe[n * s.kpe_stride + j];
    EXPECT_NEAR(lhs, rhs, 1e-4 * (1 + std::fabs(lhs)));
  }
}

TEST(MlaKernels, HeadsCopyMatchesRef) {
  const int64_t N = 6, H = 3;
  const auto x = randn(N * H * 10, 9);
  for (auto [dy, dx, width] : {std::tuple{8, 10, 8}, {10, 10, 10}, {12, 10, 7}}) {
    std::vector<float> fast(N * H * dy, 3.0f), ref(N * H * dy, -3.0f);
    heads_copy(fast.data(), x.data(), N, H, dy, dx, width);
    heads_copy_ref<float>(ref.data(), x.data(), N, H, dy, dx, width);
    EXPECT_TRUE(close(fast, ref, 0, "heads_copy"));
  }
  std::vector<float> y(N * H * 4);
  EXPECT_THROW(heads_copy(y.data(), x.data(), N, H, 4, 10, 5), std::exception);  // width > dy
}

// MLA's attention for one sequence, directly: score_h(i, j) = (q_h(i) . [k_nope_h(j) | k_pe(j)])
// / sqrt(dn + dr) for j <= i, softmax over j, o_h(i) = sum_j p v_h(j).
std::vector<double> mla_direct(const std::vector<float>& q, const std::vector<float>& kv,
                               const std::vector<float>& kpe, int64_t T, int64_t H, int64_t dn,
                               int64_t dr, int64_t dv) {
  const int64_t dqk = dn + dr;
  std::vector<double> out(T * H * dv, 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i) {
      std::vector<double> p(i + 1);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double sc = 0;
        for (int64_t d = 0; d < dqk; ++d) {
          const double k =
              d < dn ? kv[j * H * (dn + dv) + h * (dn + dv) + d] : kpe[j * dr + d - dn];
          sc += double(q[i * H * dqk + h * dqk + d]) * k;
        }
        p[j] = sc / std::sqrt(double(dqk));
        mx = std::max(mx, p[j]);
      }
      for (auto& v : p) sum += (v = std::exp(v - mx));
      for (int64_t j = 0; j <= i; ++j)
        for (int64_t d = 0; d < dv; ++d)
          out[(i * H + h) * dv + d] += p[j] / sum * kv[j * H * (dn + dv) + h * (dn + dv) + dn + d];
    }
  return out;
}

TEST(MlaKernels, PackedGqaAttentionIsMla) {
  for (auto [dn, dr, dv] : {std::tuple{6, 4, 8}, {4, 4, 12}}) {
    const int64_t T = 9, H = 3, dqk = dn + dr, Da = std::max<int64_t>(dqk, dv);
    const auto q = randn(T * H * dqk, 21), kv = randn(T * H * (dn + dv), 22);
    const auto kpe = randn(T * dr, 23);
    std::vector<float> qkv(T * 3 * H * Da), att(H * T * T), o(T * H * Da), y(T * H * dv);
    mla_pack_qkv(qkv.data(), q.data(), kv.data(), kpe.data(), dr, T, H, dn, dr, dv, Da,
                 std::sqrt(float(Da) / float(dqk)));
    attention_forward(o.data(), att.data(), qkv.data(), 1, T, H, H, Da);
    heads_copy(y.data(), o.data(), T, H, dv, Da, dv);
    const auto want = mla_direct(q, kv, kpe, T, H, dn, dr, dv);
    std::vector<float> wantf(want.begin(), want.end());
    EXPECT_TRUE(close(y, wantf, 2e-6, "packed attention vs direct MLA dv=" + std::to_string(dv)));
  }
}

}  // namespace
}  // namespace moe::cpu
