// bench_attention: the attention core of bench-moe (causal, B=8 T=512 H=8 Dh=64 by default),
// forward and backward in fp32 and with bf16 products, against the FP32 peak measured in the
// same run; and the register-tiled f32 product the fp32 attention runs on (bf16_pairs.h
// gemm_f32_small) at the attention's three shapes on one thread, against oneDNN's sgemm on the
// same operands and the one-thread FMA peak. Rounds interleave everything; medians are printed.
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/cpu/bf16_pairs.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/peak.h"

namespace {

using moe::bench::filled;
using moe::bench::median;
using moe::bench::now;
using moe::cpu::gemm_f32_small;

int usage(const char* bad) {
  if (bad) std::fprintf(stderr, "bench_attention: unknown or incomplete argument '%s'\n", bad);
  std::fprintf(stderr,
               "bench_attention: the attention core and its f32 register tiles\n"
               "  --rounds N     interleaved rounds (default 11)\n"
               "  --batch N --seq N --heads N --kv-heads N --head-dim N\n"
               "                 attention shape (default bench-moe: 8 512 8 8 64)\n");
  return bad ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 11;
  int64_t B = 8, T = 512, H = 8, Hkv = 8, Dh = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return usage(nullptr);
    if (i + 1 >= argc) return usage(argv[i]);
    const long long v = std::atoll(argv[++i]);
    if (v <= 0) return usage(argv[i]);
    if (a == "--rounds")
      rounds = int(v);
    else if (a == "--batch")
      B = v;
    else if (a == "--seq")
      T = v;
    else if (a == "--heads")
      H = v;
    else if (a == "--kv-heads")
      Hkv = v;
    else if (a == "--head-dim")
      Dh = v;
    else
      return usage(argv[i - 1]);
  }
  if (H % Hkv != 0) {
    std::fprintf(stderr, "bench_attention: --heads %lld must be a multiple of --kv-heads %lld\n",
                 (long long)H, (long long)Hkv);
    return 2;
  }
  const int threads = omp_get_max_threads();
  const double peak = moe::cpu::measure_fp32_peak_flops();
  omp_set_num_threads(1);
  const double peak1 = moe::cpu::measure_fp32_peak_flops();
  omp_set_num_threads(threads);

  // ---- the attention core ----
  const int64_t C = (H + 2 * Hkv) * Dh;
  const auto qkv = filled(size_t(B * T * C), 1), dout = filled(size_t(B * T * H * Dh), 2);
  std::vector<float> out(size_t(B * T * H * Dh)), att(size_t(B * H * T * T)), dqkv(qkv.size());
  std::vector<float> scratch(moe::cpu::attention_backward_scratch(T, Dh, threads));
  const double fwd_flop = 2.0 * 2.0 * double(B * H) * (double(T) * double(T + 1) / 2) * double(Dh);
  const double bwd_flop = 2 * fwd_flop;  // four products against the forward's two
  std::vector<double> t[2][2];           // [fp32, bf16][forward, backward]
  for (int r = 0; r < rounds + 1; ++r)
    for (int bf = 0; bf < 2; ++bf) {
      const double t0 = now();
      (bf ? moe::cpu::attention_forward_bf16 : moe::cpu::attention_forward)(
          out.data(), att.data(), qkv.data(), B, T, H, Hkv, Dh);
      const double t1 = now();
      (bf ? moe::cpu::attention_backward_bf16 : moe::cpu::attention_backward)(
          dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), B, T, H, Hkv, Dh);
      const double t2 = now();
      if (r == 0) continue;  // warmup: first touch of att and the per-thread buffers
      t[bf][0].push_back(t1 - t0);
      t[bf][1].push_back(t2 - t1);
    }
  std::printf(
      "== attention core: B=%lld T=%lld H=%lld Hkv=%lld Dh=%lld, causal, %d threads, "
      "medians of %d rounds ==\n",
      (long long)B, (long long)T, (long long)H, (long long)Hkv, (long long)Dh, threads, rounds);
  std::printf(
      "FP32 peak: %.1f GFLOP/s on %d threads, %.1f on one (AVX-512 FMA loop, "
      "src/kernels/cpu/peak.h)\n",
      peak * 1e-9, threads, peak1 * 1e-9);
  std::printf("products    pass       ms   GFLOP/s  of FP32 peak\n");
  for (int bf = 0; bf < 2; ++bf)
    for (int pass = 0; pass < 2; ++pass) {
      const double s = median(t[bf][pass]), f = pass ? bwd_flop : fwd_flop;
      std::printf("%-10s  %-8s %7.1f  %8.1f  %6.1f%%\n", bf ? "bf16" : "fp32",
                  pass ? "backward" : "forward", s * 1e3, f / s * 1e-9, 100 * f / s / peak);
    }

  // ---- the f32 register tiles on one thread, against oneDNN's sgemm ----
  struct Shape {
    const char* what;
    int64_t M, N, K;
    bool a_trans;
  };
  const Shape shapes[] = {{"scores  S = Q K^T", 64, T, Dh, false},
                          {"values  O = P V", 64, Dh, T, false},
                          {"dK += dS^T Q", T, Dh, 64, true}};
  omp_set_num_threads(1);
  std::printf(
      "\n== f32 products at the attention's shapes, one thread, medians of %d rounds "
      "of 20 calls ==\n",
      rounds);
  std::printf("%-20s %5s %5s %5s  %-14s %-14s %s\n", "product", "M", "N", "K", "tiles GFLOP/s",
              "oneDNN sgemm", "tiles/oneDNN  tiles of 1-thread peak");
  for (const Shape& s : shapes) {
    // A stored (M, K), or (K, M) when read transposed; B (K, N); all row-major and contiguous.
    const auto A = filled(size_t(s.M * s.K), 3), Bm = filled(size_t(s.K * s.N), 4);
    std::vector<float> Cm(size_t(s.M * s.N), 0.0f);
    const int64_t a_rs = s.a_trans ? 1 : s.K, a_ks = s.a_trans ? s.M : 1;
    const float beta = s.a_trans ? 1.0f : 0.0f;
    const std::function<void()> run[2] = {
        [&] {
          gemm_f32_small(Cm.data(), s.N, A.data(), a_rs, a_ks, Bm.data(), s.N, s.M, s.N, s.K, 1.0f,
                         beta);
        },
        [&] {
          dnnl_sgemm(s.a_trans ? 'T' : 'N', 'N', s.M, s.N, s.K, 1.0f, A.data(),
                     s.a_trans ? s.M : s.K, Bm.data(), s.N, beta, Cm.data(), s.N);
        }};
    std::vector<double> ts[2];
    for (int r = 0; r < rounds + 1; ++r)
      for (int k = 0; k < 2; ++k) {
        const double t0 = now();
        for (int i = 0; i < 20; ++i) run[k]();
        if (r > 0) ts[k].push_back((now() - t0) / 20);
      }
    const double f = 2.0 * double(s.M * s.N * s.K);
    const double ours = f / median(ts[0]), theirs = f / median(ts[1]);
    std::printf("%-20s %5lld %5lld %5lld  %13.1f  %13.1f  %11.2fx  %6.1f%%\n", s.what,
                (long long)s.M, (long long)s.N, (long long)s.K, ours * 1e-9, theirs * 1e-9,
                ours / theirs, 100 * ours / peak1);
  }
  omp_set_num_threads(threads);
  return 0;
}
