// Token embedding lookup and its gradient. The gradient scatters rows into the table; two rows
// with the same token would race, so threads own column slices instead of rows and add rows in
// token order: deterministic for any thread count, no atomics.
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/kernels.h"

namespace moe::cpu {
namespace {
constexpr int64_t kColChunk = 64;  // columns per backward task

void check_tokens(const char* op, const int32_t* tokens, int64_t N) {
  for (int64_t n = 0; n < N; ++n)
    MOE_CHECK(tokens[n] >= 0, op, "token ", n, " is ", tokens[n], "; token ids must be >= 0");
}
}  // namespace

void embedding_forward(float* x, const int32_t* tokens, const float* table, int64_t N, int64_t D) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
  MOE_CHECK(N >= 0 && D >= 0, "embedding_forward", "sizes must be >= 0, got N=", N, " D=", D);
  check_tokens("embedding_forward", tokens, N);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(x + n * D, table + int64_t(tokens[n]) * D, sizeof(float) * size_t(D));  // (D)
}

void embedding_backward(float* dtable, const float* dx, const int32_t* tokens, int64_t N,
                        int64_t D) {
  const prof::Scope prof_scope(prof::Part::kElementwise);
  MOE_CHECK(N >= 0 && D >= 0, "embedding_backward", "sizes must be >= 0, got N=", N, " D=", D);
  check_tokens("embedding_backward", tokens, N);
  const int64_t chunks = (D + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t d0 = c * kColChunk, d1 = d0 + kColChunk < D ? d0 + kColChunk : D;
    for (int64_t n = 0; n < N; ++n) {
      float* dst = dtable + int64_t(tokens[n]) * D;
      const float* src = dx + n * D;
#pragma omp simd
      for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

}  // namespace moe::cpu
