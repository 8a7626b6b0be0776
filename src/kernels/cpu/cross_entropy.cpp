// Fused softmax cross-entropy over the vocabulary. One row per iteration across threads; the
// total is summed afterwards in row order (in double), so it does not depend on the threads.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/exp_fast.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {

void check_args(const char* op, const int32_t* targets, int64_t N, int64_t V) {
  MOE_CHECK(N >= 0 && V > 0, op, "need N >= 0 and V > 0, got N=", N, " V=", V);
  for (int64_t n = 0; n < N; ++n)
    MOE_CHECK(targets[n] >= 0 && targets[n] < V, op, "target ", n, " is ", targets[n],
              ", outside the vocabulary [0, ", V, ")");
}

float row_max(const float* x, int64_t V) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int64_t v = 0; v < V; ++v) mx = x[v] > mx ? x[v] : mx;
  return mx;
}

double sum_in_row_order(const float* losses, int64_t N) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) total += double(losses[n]);
  return total;
}

}  // namespace

double cross_entropy_forward_backward(float* dlogits, float* losses, const float* logits,
                                      const int32_t* targets, int64_t N, int64_t V, float dscale) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
  check_args("cross_entropy_forward_backward", targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * V;  // (V); may be the same memory as d
    float* d = dlogits + n * V;
    const float x_target = x[targets[n]];  // read before d overwrites it
    const float mx = row_max(x, V);
    float sum = 0;
    // d holds exp(x - max) for now; each element is read before it is written.
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) {
      const float e = exp_fast(x[v] - mx);
      d[v] = e;
      sum += e;
    }
    losses[n] = mx + std::log(sum) - x_target;
    const float k = dscale / sum;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) d[v] *= k;
    d[targets[n]] -= dscale;
  }
  return sum_in_row_order(losses, N);
}

double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                             int64_t N, int64_t V) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
  check_args("cross_entropy_forward", targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * V;
    const float mx = row_max(x, V);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += exp_fast(x[v] - mx);
    losses[n] = mx + std::log(sum) - x[targets[n]];
  }
  return sum_in_row_order(losses, N);
}

}  // namespace moe::cpu
