// AdamW step time against the bytes it moves, as a fraction of this machine's DRAM bandwidth
// measured in the same run (issue #19, item 3). A benchmark, not a test: it prints, it never
// fails on a time.
//
//   bench_adamw [--params 75.81e6] [--rounds 7] [--threads 2]
//
// AdamW (kernels/cpu/adamw.cpp) reads p, m, v and g and writes p, m and v: 28 bytes a parameter,
// no write-allocate traffic since every line it writes it has just read. The default size is
// bench-moe's 75.81M parameters (4 x 303 MB of state, far beyond any cache).
//
// The bandwidth it is compared with is measured by STREAM-like kernels on arrays of the same
// size, counting the bytes each moves the same way:
//   read    s += a[i]                        (4 B a element: reads only; AVX-512, 4 sums)
//   scale   a[i] = s * a[i] + b[i]           (12 B: 2 in, 1 out in place)
//   triad   a[i] = b[i] + s * c[i]           (16 B: 2 in, 1 out to a line not read:
//                                             write-allocate counted as a read)
//   4r3w    p = s p + m, m = s m + v, v = s v + g   (28 B: AdamW's streams, trivial math)
// and the best of them is "the machine's DRAM bandwidth". Every figure is the median over
// rounds; the rounds interleave the kernels so that a noisy neighbour hits them alike.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int64_t params = 75810000;
  int rounds = 7;
  int threads = 2;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf("bench_adamw [--params 75.81e6] [--rounds 7] [--threads 2]\n");
      std::exit(0);
    }
    MOE_CHECK(i + 1 < argc, "bench_adamw", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--params")
      o.params = static_cast<int64_t>(std::atof(v.c_str()));
    else if (k == "--rounds")
      o.rounds = std::atoi(v.c_str());
    else if (k == "--threads")
      o.threads = std::atoi(v.c_str());
    else
      MOE_FAIL("bench_adamw", "unknown option ", k, " (known: --params --rounds --threads)");
  }
  MOE_CHECK(o.params >= 1000000 && o.rounds >= 1 && o.threads >= 1, "bench_adamw",
            "need --params >= 1e6 (to leave the caches), --rounds >= 1 and --threads >= 1");
  return o;
}

template <class F>
double seconds(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// sum of a[0..n) over the threads; four vector sums so the adds do not wait on each other
// (GCC leaves an OpenMP simd float reduction scalar here, which measured 5 GB/s).
float read_all(const float* a, int64_t n) {
  float total = 0;
#pragma omp parallel reduction(+ : total)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t i = lo;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; i + 64 <= hi; i += 64) {
      s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
      s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
      s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
      s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (const float x : lanes) total += x;
#endif
    for (; i < hi; ++i) total += a[i];
  }
  return total;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Arrays first touched by the threads that use them (static schedule), as the optimizer's are.
std::vector<float> array(int64_t n, float value) {
  std::vector<float> a(static_cast<size_t>(n));
  float* p = a.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = value;
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    omp_set_num_threads(o.threads);
    const int64_t n = o.params;
    auto p = array(n, 0.01f), m = array(n, 0.0f), v = array(n, 0.0f), g = array(n, 1e-3f);
    auto a = array(n, 1.0f), b = array(n, 2.0f), c = array(n, 3.0f);
    float* pa = a.data();
    const float* pb = b.data();
    const float* pc = c.data();
    std::vector<double> t_adam, t_read, t_scale, t_triad, t_4r3w;
    double sink = 0;
    int64_t step = 1;
    for (int r = 0; r < o.rounds + 1; ++r) {  // round 0 warms up
      const double ta = seconds([&] {
        moe::cpu::adamw_step(p.data(), m.data(), v.data(), g.data(), n, 1e-3f, 0.9f, 0.95f,
                             1e-8f, 0.1f, step++);
      });
      const double tr = seconds([&] { sink += double(read_all(pa, n)); });
      const double ts = seconds([&] {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; ++i) pa[i] = 0.5f * pa[i] + pb[i];
      });
      const double tt = seconds([&] {
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
      });
      const double tq = seconds([&] {
        float *pp = p.data(), *pm = m.data(), *pv = v.data();
        const float* pg = g.data();
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; ++i) {
          const float mi = pm[i], vi = pv[i];
          pp[i] = 0.5f * pp[i] + mi;
          pm[i] = 0.5f * mi + vi;
          pv[i] = 0.5f * vi + pg[i];
        }
      });
      if (r == 0) continue;
      t_adam.push_back(ta), t_read.push_back(tr), t_scale.push_back(ts), t_triad.push_back(tt);
      t_4r3w.push_back(tq);
    }
    const double gb = 1e-9 * double(n);
    const double bw_read = 4 * gb / median(t_read), bw_scale = 12 * gb / median(t_scale),
                 bw_triad = 16 * gb / median(t_triad);
    const double bw_4r3w = 28 * gb / median(t_4r3w);
    const double bw = std::max({bw_read, bw_scale, bw_triad, bw_4r3w});
    const double adam = 28 * gb / median(t_adam);
    std::printf("== AdamW bandwidth, %.2fM parameters, %d threads, median of %d rounds ==\n",
                double(n) / 1e6, o.threads, o.rounds);
    std::printf("DRAM read   (s += a):          %7.2f GB/s  (%.1f ms)\n", bw_read,
                1e3 * median(t_read));
    std::printf("DRAM scale  (a = s a + b):     %7.2f GB/s  (%.1f ms)\n", bw_scale,
                1e3 * median(t_scale));
    std::printf("DRAM triad  (a = b + s c):     %7.2f GB/s  (%.1f ms, write-allocate counted)\n",
                bw_triad, 1e3 * median(t_triad));
    std::printf("DRAM 4r3w   (AdamW's streams): %7.2f GB/s  (%.1f ms)\n", bw_4r3w,
                1e3 * median(t_4r3w));
    std::printf("AdamW step  (28 B/param):      %7.2f GB/s  (%.1f ms)\n", adam,
                1e3 * median(t_adam));
    std::printf("ratio AdamW / best measured DRAM bandwidth: %.1f%% (target >= 70%%)\n",
                100.0 * adam / bw);
    std::printf("(checksum %.3g)\n", sink + double(p[0]));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
