#include "comm/reduce.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moe::comm {

namespace {

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 0x40);  // keep NaN a NaN
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

template <class T, class F>
void apply(void* dst, const void* a, const void* b, size_t n, F f) {
  T* d = static_cast<T*>(dst);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) d[i] = f(x[i], y[i]);
}

template <class T>
void reduce_typed(void* dst, const void* a, const void* b, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return apply<T>(dst, a, b, n, [](T x, T y) { return T(x + y); });
    case ReduceOp::kMax: return apply<T>(dst, a, b, n, [](T x, T y) { return std::max(x, y); });
    case ReduceOp::kMin: return apply<T>(dst, a, b, n, [](T x, T y) { return std::min(x, y); });
  }
}

// 16-bit floats: widen to f32, reduce, round back. `to`/`from` convert one element.
template <class ToF, class FromF>
void reduce_half(void* dst, const void* a, const void* b, size_t n, ReduceOp op, ToF to,
                 FromF from) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  // Blocks of 256 let the compiler vectorize the widen / op / narrow loops separately.
  float fa[256], fb[256];
  for (size_t i0 = 0; i0 < n; i0 += 256) {
    const size_t m = std::min<size_t>(256, n - i0);
    for (size_t i = 0; i < m; ++i) fa[i] = to(x[i0 + i]);
    for (size_t i = 0; i < m; ++i) fb[i] = to(y[i0 + i]);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        for (size_t i = 0; i < m; ++i) fa[i] += fb[i];
        break;
      case ReduceOp::kMax:
        for (size_t i = 0; i < m; ++i) fa[i] = std::max(fa[i], fb[i]);
        break;
      case ReduceOp::kMin:
        for (size_t i = 0; i < m; ++i) fa[i] = std::min(fa[i], fb[i]);
        break;
    }
    for (size_t i = 0; i < m; ++i) d[i0 + i] = from(fa[i]);
  }
}

inline float f16_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline uint16_t float_to_f16(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

}  // namespace

void reduce_into(void* dst, const void* a, const void* b, size_t n, Dtype t, ReduceOp op) {
  switch (t) {
    case Dtype::kF32: return reduce_typed<float>(dst, a, b, n, op);
    case Dtype::kF64: return reduce_typed<double>(dst, a, b, n, op);
    case Dtype::kI32: return reduce_typed<int32_t>(dst, a, b, n, op);
    case Dtype::kI64: return reduce_typed<int64_t>(dst, a, b, n, op);
    case Dtype::kBF16: return reduce_half(dst, a, b, n, op, bf16_to_float, float_to_bf16);
    case Dtype::kF16: return reduce_half(dst, a, b, n, op, f16_to_float, float_to_f16);
    default: break;
  }
  MOE_FAIL("comm.reduce", "element type ", comm_dtype_name(t), " cannot be reduced");
}

void finish_avg(void* buf, size_t n, Dtype t, int divisor) {
  switch (t) {
    case Dtype::kF32: {
      float* p = static_cast<float*>(buf);
      const float d = float(divisor);
      for (size_t i = 0; i < n; ++i) p[i] /= d;
      return;
    }
    case Dtype::kF64: {
      double* p = static_cast<double*>(buf);
      for (size_t i = 0; i < n; ++i) p[i] /= double(divisor);
      return;
    }
    case Dtype::kBF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < n; ++i) p[i] = float_to_bf16(bf16_to_float(p[i]) / float(divisor));
      return;
    }
    case Dtype::kF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < n; ++i) p[i] = float_to_f16(f16_to_float(p[i]) / float(divisor));
      return;
    }
    default: break;
  }
  MOE_FAIL("comm.reduce", "avg needs a floating type, got ", comm_dtype_name(t));
}

}  // namespace moe::comm
