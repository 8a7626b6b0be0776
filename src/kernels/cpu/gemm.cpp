// GEMM, linear layers and grouped expert GEMM on oneDNN's matmul primitive.
//
// Creating a matmul primitive costs 0.1-1 ms (JIT); executing one costs microseconds, so
// primitives are cached. gemm() caches one per full shape (oneDNN's brgemm implementation, the
// fastest for fixed shapes) and lets oneDNN thread it, except the weight gradients'
// transposed-A products, which it cuts into row tasks itself (gemm_row_tasks). The grouped
// kernels see new row counts on every step: they cut each group into tasks of 256 rows, run full
// tasks on fixed-shape primitives and a group's last, shorter task (and backward_w's rows, its
// K) on primitives with the varying dimension as DNNL_RUNTIME_DIM_VAL, created once per (in,
// out, kind) and reused for every group and step. Transposes and sub-matrices are
// memory-descriptor strides (no copies); beta != 0 is a sum post-op.
//
// The same primitives take bf16 inputs (bf16 x bf16 products accumulated in f32, f32 output):
// the element type is part of the cache key. Without AVX-512 BF16 (or with MOE_NO_AVX512_BF16=1)
// the bf16 operands are widened to f32 and the f32 primitive runs: the same products (a bf16
// product is exact in f32), the same f32 accumulation, slower.
//
// Scratchpads are user-managed (a per-thread buffer): oneDNN's default global scratchpad only
// allows a primitive to run on the thread that created it, and the cache shares primitives
// across threads.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/profile.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/onednn.h"
#include "kernels/cpu/quantize.h"

namespace moe::cpu {
namespace {

using dnnl::memory;
using Dims = memory::dims;
constexpr int64_t kRt = DNNL_RUNTIME_DIM_VAL;

// Grouped GEMMs are cut into tasks that threads take one at a time, each a single-threaded
// GEMM: rows of the forward / backward_x outputs, rows of dW in backward_w. Fixed sizes, so
// results do not depend on the thread count.
constexpr int64_t kTaskRows = 256;

// Below this many rows, gemm() runs a primitive built for a runtime row count (see gemm_impl).
constexpr int64_t kFewRows = 16;

// gemm() runs a transposed-A product with at least 2 x kSplitRows rows as row tasks
// (gemm_row_tasks).
constexpr int64_t kSplitRows = 128;

// The per-thread scratchpad, grown to the largest size any primitive asked for.
void* thread_scratchpad(size_t bytes) { return thread_buffer<char, 0>(bytes); }

// A row-major matrix of logical shape [rows, cols] with leading dimension ld, stored
// transposed ([cols, rows]) if `trans`. rows or cols may be kRt, but not the strided one.
memory::desc matrix_desc(int64_t rows, int64_t cols, bool trans, int64_t ld,
                         memory::data_type type = memory::data_type::f32) {
  return trans ? memory::desc({rows, cols}, type, Dims{1, ld})
               : memory::desc({rows, cols}, type, Dims{ld, 1});
}

// A GEMM's shape: C[M,N] (ldc) = alpha * op(A)[M,K] (lda) @ op(B)[K,N] (ldb) + beta * C.
// A and B are f32, or bf16 if `bf16`; C is f32.
struct Shape {
  int64_t M, N, K;
  bool ta, tb;
  int64_t lda, ldb, ldc;
  bool bf16 = false;
};

memory::data_type in_type(const Shape& s) {
  return s.bf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, bool,
                       uint32_t, uint32_t>;

struct Prim {
  dnnl::matmul matmul;
  size_t scratch_bytes;
};

// Primitives by (shape, alpha, beta); M or K may be kRt.
class MatmulCache {
 public:
  const Prim& get(const Shape& s, float alpha, float beta) {
    const Key key{s.M,   s.N,   s.K,    s.ta,           s.tb,          s.lda,
                  s.ldb, s.ldc, s.bf16, bits_of(alpha), bits_of(beta)};
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops po;
      po.append_sum(beta);
      attr.set_post_ops(po);
    }
    const dnnl::matmul::desc desc(matrix_desc(s.M, s.K, s.ta, s.lda, in_type(s)),
                                  matrix_desc(s.K, s.N, s.tb, s.ldb, in_type(s)),
                                  matrix_desc(s.M, s.N, false, s.ldc));
    const dnnl::matmul::primitive_desc pd(desc, attr, onednn_engine());
    // std::map nodes are stable: the reference stays valid after later inserts.
    return cache_.emplace(key, Prim{dnnl::matmul(pd), pd.scratchpad_desc().get_size()})
        .first->second;
  }

 private:
  std::mutex mu_;
  std::map<Key, Prim> cache_;
};

MatmulCache& cache() {
  static MatmulCache c;
  return c;
}

// bf16 shapes run on f32 primitives when the CPU has no bf16 dot product (see the top).
const Prim& prim(Shape s, float alpha, float beta) {
  if (s.bf16 && !bf16_native()) s.bf16 = false;
  return cache().get(s, alpha, beta);
}

// Widens the `count` bf16 values at src into a per-thread f32 buffer (slot 0 or 1).
const float* widened(const void* src, int64_t count, int slot) {
  float* out = slot == 0 ? thread_buffer<float, 0>(size_t(count))
                         : thread_buffer<float, 1>(size_t(count));
  widen_bf16(out, static_cast<const bf16*>(src), count);
  return out;
}

// Runs `p` (from prim(), built for a shape whose M or K may be runtime) on the sizes in `s`.
void run(const Prim& p, Shape s, float* C, const void* A, const void* B) {
  if (s.bf16 && !bf16_native()) {  // the f32 fallback: widen exactly the elements op() reads
    A = widened(A, s.ta ? (s.K - 1) * s.lda + s.M : (s.M - 1) * s.lda + s.K, 0);
    B = widened(B, s.tb ? (s.N - 1) * s.ldb + s.K : (s.K - 1) * s.ldb + s.N, 1);
    s.bf16 = false;
  }
  auto& eng = onednn_engine();
  memory a(matrix_desc(s.M, s.K, s.ta, s.lda, in_type(s)), eng, const_cast<void*>(A));
  memory b(matrix_desc(s.K, s.N, s.tb, s.ldb, in_type(s)), eng, const_cast<void*>(B));
  memory c(matrix_desc(s.M, s.N, false, s.ldc), eng, C);
  memory pad(memory::desc({int64_t(p.scratch_bytes)}, memory::data_type::u8, Dims{1}), eng,
             thread_scratchpad(p.scratch_bytes));
  auto& stream = onednn_thread_stream();
  p.matmul.execute(stream, {{DNNL_ARG_SRC, a},
                            {DNNL_ARG_WEIGHTS, b},
                            {DNNL_ARG_DST, c},
                            {DNNL_ARG_SCRATCHPAD, pad}});
  stream.wait();
}

void check_groups(const char* op, const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  MOE_CHECK(E >= 0 && in >= 0 && out >= 0, op, "sizes must be >= 0, got E=", E, " in=", in,
            " out=", out);
  MOE_CHECK(E == 0 || offsets != nullptr, op, "offsets is null (needs E+1 = ", E + 1,
            " entries)");
  if (E == 0) return;
  MOE_CHECK(offsets[0] == 0, op, "offsets[0] must be 0, got ", offsets[0]);
  for (int64_t e = 0; e < E; ++e)
    MOE_CHECK(offsets[e + 1] >= offsets[e], op, "offsets must be non-decreasing, offsets[", e,
              "]=", offsets[e], " > offsets[", e + 1, "]=", offsets[e + 1]);
}

// One piece of a grouped GEMM: expert e, units [u0, u0 + n) of its rows.
struct Task {
  int64_t e, u0, n;
};

// Runs fn(task) for every chunk of every expert's `units(e)`, spread over threads.
template <class Units, class Fn>
void for_each_task(int64_t E, Units units, Fn fn) {
  int64_t count = 0;
  for (int64_t e = 0; e < E; ++e) count += (units(e) + kTaskRows - 1) / kTaskRows;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < count; ++t) {
    // Find task t by walking the experts: E is small next to the work of one task.
    int64_t e = 0, first = 0;
    for (;; ++e) {
      const int64_t n = (units(e) + kTaskRows - 1) / kTaskRows;
      if (t < first + n) break;
      first += n;
    }
    const int64_t u0 = (t - first) * kTaskRows;
    const int64_t n = units(e) - u0 < kTaskRows ? units(e) - u0 : kTaskRows;
    fn(Task{e, u0, n});
  }
}

template <class In>
constexpr bool kIsBf16 = std::is_same_v<In, bf16>;

// C = alpha A^T B + beta C, A stored (K, M): the weight gradients, K the token count. oneDNN
// threads these over K and reached 155-170 GFLOP/s on this machine's 2 cores at bench-moe's
// shapes (M, N 512-3072, K 4096); tasks of 128 or 256 rows of C, each a single-threaded brgemm
// over the whole K, reached 180-205 (2026-12-03). The task size depends on M only, so the
// results do not depend on the thread count.
template <class In>
void gemm_row_tasks(const Shape& s, float* C, const In* A, const In* B, float alpha, float beta) {
  const int64_t r = s.M >= 4 * kSplitRows ? 2 * kSplitRows : kSplitRows, tail = s.M % r;
  auto part = [&](int64_t n) {
    return Shape{n, s.N, s.K, true, s.tb, s.lda, s.ldb, s.ldc, s.bf16};
  };
  const Prim& full = prim(part(r), alpha, beta);
  const Prim* last = tail != 0 ? &prim(part(tail), alpha, beta) : nullptr;
  const int64_t tasks = (s.M + r - 1) / r;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t m0 = t * r, n = s.M - m0 < r ? s.M - m0 : r;
    run(n == r ? full : *last, part(n), C + m0 * s.ldc, A + m0, B);
  }
}

template <class In>
void gemm_impl(float* C, const In* A, const In* B, int64_t M, int64_t N, int64_t K, bool trans_a,
               bool trans_b, float alpha, float beta) {
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm", "sizes must be >= 0, got M=", M, " N=", N,
            " K=", K);
  if (M == 0 || N == 0) return;
  MOE_CHECK(C != nullptr, "gemm", "C is null for M=", M, " N=", N);
  if (K == 0) {  // empty product: C = beta * C
    for (int64_t i = 0; i < M * N; ++i) C[i] = beta == 0.0f ? 0.0f : beta * C[i];
    return;
  }
  MOE_CHECK(A != nullptr && B != nullptr, "gemm", "A or B is null for M=", M, " N=", N, " K=", K);
  const Shape s{M, N, K, trans_a, trans_b, trans_a ? M : K, trans_b ? K : N, N, kIsBf16<In>};
  // A few rows (decoding one token): a fixed-shape brgemm would repack B on every call; the
  // primitive with a runtime M is oneDNN's GEMV-like jit gemm, 2-2.5x faster there.
  if (M < kFewRows && !trans_a) {
    Shape rt = s;
    rt.M = kRt;
    return run(prim(rt, alpha, beta), s, C, A, B);
  }
  if (trans_a && M >= 2 * kSplitRows) return gemm_row_tasks(s, C, A, B, alpha, beta);
  run(prim(s, alpha, beta), s, C, A, B);
}

// The primitives of a grouped forward or backward_x task: a full task (kTaskRows rows) runs a
// primitive built for exactly that shape (oneDNN's brgemm), a group's last, shorter task one
// with a runtime row count (brgemm takes no runtime dimension in oneDNN 2.6, so that one is its
// jit gemm). On bench-moe's expert shapes the fixed one ran 4-9% faster (2026-12-03).
struct TaskPrims {
  const Prim* full;
  const Prim* rows;
  const Prim& of(int64_t n) const { return n == kTaskRows ? *full : *rows; }
};

TaskPrims task_prims(Shape full) {
  Shape rt = full;
  rt.M = kRt;
  return {&prim(full, 1.0f, 0.0f), &prim(rt, 1.0f, 0.0f)};
}

template <class In>
void grouped_forward_impl(float* y, const In* x, const In* W, int64_t w_stride,
                          const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  check_groups("grouped_linear_forward", offsets, E, in, out);
  if (E == 0 || out == 0) return;
  if (in == 0) {
    std::memset(y, 0, sizeof(float) * size_t(offsets[E] * out));
    return;
  }
  // y rows [r, r+n) (n,out) = x rows (n,in) @ W_e^T (see task_prims for the two primitives).
  constexpr bool h = kIsBf16<In>;
  const TaskPrims p = task_prims(Shape{kTaskRows, out, in, false, true, in, in, out, h});
  for_each_task(
      E, [&](int64_t e) { return offsets[e + 1] - offsets[e]; },
      [&](const Task& t) {
        const int64_t r = offsets[t.e] + t.u0;
        run(p.of(t.n), Shape{t.n, out, in, false, true, in, in, out, h}, y + r * out, x + r * in,
            W + t.e * w_stride);
      });
}

template <class In>
void grouped_backward_x_impl(float* dx, const In* dy, const In* W, int64_t w_stride,
                             const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  check_groups("grouped_linear_backward_x", offsets, E, in, out);
  if (E == 0 || in == 0) return;
  if (out == 0) {
    std::memset(dx, 0, sizeof(float) * size_t(offsets[E] * in));
    return;
  }
  // dx rows [r, r+n) (n,in) = dy rows (n,out) @ W_e [out,in].
  constexpr bool h = kIsBf16<In>;
  const TaskPrims p = task_prims(Shape{kTaskRows, in, out, false, false, out, in, in, h});
  for_each_task(
      E, [&](int64_t e) { return offsets[e + 1] - offsets[e]; },
      [&](const Task& t) {
        const int64_t r = offsets[t.e] + t.u0;
        run(p.of(t.n), Shape{t.n, in, out, false, false, out, in, in, h}, dx + r * in,
            dy + r * out, W + t.e * w_stride);
      });
}

template <class In>
void grouped_backward_w_impl(float* dW, int64_t w_stride, const In* dy, const In* x,
                             const int64_t* offsets, int64_t E, int64_t in, int64_t out) {
  check_groups("grouped_linear_backward_w", offsets, E, in, out);
  if (E == 0 || in == 0 || out == 0) return;
  // dW_e rows [o, o+n) (n,in) += dy_g[:, o:o+n]^T (n,rows) @ x_g (rows,in): each element of dW
  // is one task's full sum over the group's rows. rows is the runtime K; the M of a task is n.
  constexpr bool h = kIsBf16<In>;
  const int64_t M = out < kTaskRows ? out : kTaskRows;
  const Prim& full = prim(Shape{M, in, kRt, true, false, out, in, in, h}, 1.0f, 1.0f);
  const int64_t tail_rows = out % kTaskRows;
  const Prim* tail =
      out > kTaskRows && tail_rows != 0
          ? &prim(Shape{tail_rows, in, kRt, true, false, out, in, in, h}, 1.0f, 1.0f)
          : nullptr;
  for_each_task(
      E, [&](int64_t e) { return offsets[e + 1] == offsets[e] ? int64_t(0) : out; },
      [&](const Task& t) {
        const int64_t r0 = offsets[t.e], rows = offsets[t.e + 1] - r0;
        run(t.n == M ? full : *tail, Shape{t.n, in, rows, true, false, out, in, in, h},
            dW + t.e * w_stride + t.u0 * in, dy + r0 * out + t.u0, x + r0 * in);
      });
}

}  // namespace

// The public kernels: one f32 and one bf16 entry each, the same code.
#define MOE_GEMM_KERNELS(In)                                                                    \
  void gemm(float* C, const In* A, const In* B, int64_t M, int64_t N, int64_t K, bool trans_a,  \
            bool trans_b, float alpha, float beta) {                                            \
    const prof::Scope prof_scope(prof::Part::kGemm);                                            \
    gemm_impl(C, A, B, M, N, K, trans_a, trans_b, alpha, beta);                                 \
  }                                                                                             \
  void linear_forward(float* y, const In* x, const In* W, int64_t N, int64_t in, int64_t out) { \
    gemm(y, x, W, N, out, in, false, true, 1.0f, 0.0f); /* (N,out) = (N,in) @ [out,in]^T */     \
  }                                                                                             \
  void linear_backward_x(float* dx, const In* dy, const In* W, int64_t N, int64_t in,          \
                         int64_t out, bool accumulate) {                                        \
    gemm(dx, dy, W, N, in, out, false, false, 1.0f, accumulate ? 1.0f : 0.0f); /* (N,in) */    \
  }                                                                                             \
  void linear_backward_w(float* dW, const In* dy, const In* x, int64_t N, int64_t in,          \
                         int64_t out) {                                                         \
    gemm(dW, dy, x, out, in, N, true, false, 1.0f, 1.0f); /* [out,in] += (N,out)^T @ (N,in) */ \
  }                                                                                             \
  void grouped_linear_forward(float* y, const In* x, const In* W, int64_t w_stride,            \
                              const int64_t* offsets, int64_t E, int64_t in, int64_t out) {     \
    const prof::Scope prof_scope(prof::Part::kGroupedGemm);                                     \
    grouped_forward_impl(y, x, W, w_stride, offsets, E, in, out);                               \
  }                                                                                             \
  void grouped_linear_backward_x(float* dx, const In* dy, const In* W, int64_t w_stride,       \
                                 const int64_t* offsets, int64_t E, int64_t in, int64_t out) {  \
    const prof::Scope prof_scope(prof::Part::kGroupedGemm);                                     \
    grouped_backward_x_impl(dx, dy, W, w_stride, offsets, E, in, out);                          \
  }                                                                                             \
  void grouped_linear_backward_w(float* dW, int64_t w_stride, const In* dy, const In* x,       \
                                 const int64_t* offsets, int64_t E, int64_t in, int64_t out) {  \
    const prof::Scope prof_scope(prof::Part::kGroupedGemm);                                     \
    grouped_backward_w_impl(dW, w_stride, dy, x, offsets, E, in, out);                          \
  }

MOE_GEMM_KERNELS(float)
MOE_GEMM_KERNELS(bf16)
#undef MOE_GEMM_KERNELS

}  // namespace moe::cpu
