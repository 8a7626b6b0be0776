// bench_gemm: the engine's GEMM entry points at bench-moe's shapes against the plain oneDNN way
// of running the same product, in interleaved rounds (medians):
//   - weight gradients dW[out, in] += dY^T X over 4096 tokens: linear_backward_w (row tasks of
//     dW, each a single-threaded primitive over the whole K) against one matmul primitive that
//     oneDNN threads itself;
//   - grouped expert forward y = x W_e^T over tasks of 256 rows: grouped_linear_forward (full
//     tasks on a fixed-shape primitive, the last one of a group on a runtime-row one) against
//     every task on the runtime-row primitive.
// Prints GFLOP/s of both, the ratio, and the FP32 peak measured in the same run.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/peak.h"

namespace {

using dnnl::memory;
using Dims = memory::dims;

using moe::bench::filled;
using moe::bench::median;
using moe::bench::now;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// A matmul primitive C[M,N] = op(A) op(B) (+ C when accumulate), f32, user scratchpad; M may
// be DNNL_RUNTIME_DIM_VAL. A is (M,K) with leading dimension lda, or stored (K,M) if ta.
struct Matmul {
  dnnl::matmul prim;
  std::vector<std::vector<char>> pads;  // one scratchpad per thread
  Matmul(int64_t M, int64_t N, int64_t K, bool ta, int64_t lda, bool tb, int64_t ldb,
         bool accumulate) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    auto md = [](int64_t r, int64_t c, bool t, int64_t ld) {
      return t ? memory::desc({r, c}, memory::data_type::f32, Dims{1, ld})
               : memory::desc({r, c}, memory::data_type::f32, Dims{ld, 1});
    };
    const dnnl::matmul::desc d(md(M, K, ta, lda), md(K, N, tb, ldb), md(M, N, false, N));
    const dnnl::matmul::primitive_desc pd(d, attr, engine());
    prim = dnnl::matmul(pd);
    pads.assign(size_t(omp_get_max_threads()),
                std::vector<char>(pd.scratchpad_desc().get_size() + 64));
  }
  void run(int64_t M, int64_t N, int64_t K, bool ta, int64_t lda, bool tb, int64_t ldb, float* C,
           const float* A, const float* B) {
    auto md = [](int64_t r, int64_t c, bool t, int64_t ld) {
      return t ? memory::desc({r, c}, memory::data_type::f32, Dims{1, ld})
               : memory::desc({r, c}, memory::data_type::f32, Dims{ld, 1});
    };
    auto& pad = pads[size_t(omp_get_thread_num())];
    memory a(md(M, K, ta, lda), engine(), const_cast<float*>(A));
    memory b(md(K, N, tb, ldb), engine(), const_cast<float*>(B));
    memory c(md(M, N, false, N), engine(), C);
    memory p(memory::desc({int64_t(pad.size())}, memory::data_type::u8, Dims{1}), engine(),
             pad.data());
    dnnl::stream s(engine());
    prim.execute(
        s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}, {DNNL_ARG_SCRATCHPAD, p}});
    s.wait();
  }
};

// Median seconds of each of the two runs, interleaved over `rounds` rounds after one warmup.
std::pair<double, double> race(int rounds, const std::function<void()>& ours,
                               const std::function<void()>& plain) {
  std::vector<double> t[2];
  for (int r = 0; r < rounds + 1; ++r)
    for (int k = 0; k < 2; ++k) {
      const double t0 = now();
      (k ? plain : ours)();
      if (r > 0) t[k].push_back(now() - t0);
    }
  return {median(t[0]), median(t[1])};
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 9;
  const int64_t tokens = 4096;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      rounds = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "bench_gemm: the engine's weight-gradient and grouped GEMMs against plain "
                   "oneDNN\n  --rounds N   interleaved rounds (default 9)\n%s",
                   a == "--help" || a == "-h" ? "" : ("unknown argument: " + a + "\n").c_str());
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  const double peak = moe::cpu::measure_fp32_peak_flops();
  std::printf("== bench_gemm: %d threads, %lld tokens, medians of %d interleaved rounds ==\n",
              omp_get_max_threads(), (long long)tokens, rounds);
  std::printf("FP32 peak: %.1f GFLOP/s (AVX-512 FMA loop, src/kernels/cpu/peak.h)\n", peak * 1e-9);
  const auto x = filled(size_t(tokens * 1536), 1), dy = filled(size_t(tokens * 3072), 2);
  const auto W = filled(size_t(3072 * 1536), 3);
  std::vector<float> dW(W.size(), 0.0f), y(size_t(tokens * 3072), 0.0f);

  std::printf("\nweight gradients dW[out,in] += dY^T X (K = %lld tokens)\n", (long long)tokens);
  std::printf("%5s %5s  %16s  %18s  %6s\n", "out", "in", "ours (row tasks)", "oneDNN threads it",
              "ratio");
  struct Dense {
    int64_t out, in;
  };
  for (const Dense s :
       {Dense{512, 512}, Dense{1024, 512}, Dense{1536, 512}, Dense{3072, 512}, Dense{512, 1536}}) {
    Matmul plain(s.out, s.in, tokens, true, s.out, false, s.in, true);
    const auto [t_ours, t_plain] = race(
        rounds,
        [&] { moe::cpu::linear_backward_w(dW.data(), dy.data(), x.data(), tokens, s.in, s.out); },
        [&] {
          plain.run(s.out, s.in, tokens, true, s.out, false, s.in, dW.data(), dy.data(), x.data());
        });
    const double f = 2.0 * double(s.out * s.in * tokens);
    std::printf("%5lld %5lld  %10.1f GF/s  %12.1f GF/s  %5.2fx\n", (long long)s.out,
                (long long)s.in, f / t_ours * 1e-9, f / t_plain * 1e-9, t_plain / t_ours);
  }

  // The 8 groups share one weight matrix (w_stride 0), so both sides read the same bytes.
  std::printf("\ngrouped forward y = x W_e^T, %lld rows as 8 groups of %lld (tasks of 256 rows)\n",
              (long long)tokens, (long long)tokens / 8);
  std::printf("%5s %5s  %22s  %21s  %6s\n", "in", "out", "ours (fixed + runtime)",
              "runtime rows for all", "ratio");
  struct Grouped {
    int64_t in, out;
  };
  const int64_t E = 8, rows = tokens / E, task = 256;
  std::vector<int64_t> offsets(size_t(E + 1));
  for (int64_t e = 0; e <= E; ++e) offsets[size_t(e)] = e * rows;
  for (const Grouped s : {Grouped{512, 1024}, Grouped{512, 512}, Grouped{1024, 512}}) {
    Matmul rt(DNNL_RUNTIME_DIM_VAL, s.out, s.in, false, s.in, true, s.in, false);
    const auto [t_ours, t_plain] = race(
        rounds,
        [&] {
          moe::cpu::grouped_linear_forward(y.data(), x.data(), W.data(), 0, offsets.data(), E, s.in,
                                           s.out);
        },
        [&] {
#pragma omp parallel for schedule(dynamic, 1)
          for (int64_t t = 0; t < tokens / task; ++t)
            rt.run(task, s.out, s.in, false, s.in, true, s.in, y.data() + t * task * s.out,
                   x.data() + t * task * s.in, W.data());
        });
    const double f = 2.0 * double(tokens * s.in * s.out);
    std::printf("%5lld %5lld  %16.1f GF/s  %15.1f GF/s  %5.2fx\n", (long long)s.in,
                (long long)s.out, f / t_ours * 1e-9, f / t_plain * 1e-9, t_plain / t_ours);
  }
  return 0;
}
