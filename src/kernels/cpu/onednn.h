// What the kernels built on oneDNN primitives share (gemm.cpp, int8.cpp): one CPU engine, one
// stream per thread (primitives may run from inside our parallel regions, oneDNN then runs them
// on the calling thread alone), and grow-only per-thread buffers (user scratchpads, widened or
// quantized operands): oneDNN's default global scratchpad would tie a primitive to the thread
// that created it, and the primitive caches share primitives across threads.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe::cpu {

inline dnnl::engine& onednn_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline dnnl::stream& onednn_thread_stream() {
  thread_local dnnl::stream stream(onednn_engine());
  return stream;
}

// n elements of T in this thread's buffer number kSlot, grown to the largest n asked for,
// starting on a 64-byte boundary (a cache line: operands of the GEMM kernels).
template <class T, int kSlot>
T* thread_buffer(size_t n) {
  constexpr size_t kPad = (64 + sizeof(T) - 1) / sizeof(T);
  thread_local std::vector<T> buf;
  if (buf.size() < n + kPad) buf.resize(n + kPad);
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return reinterpret_cast<T*>((addr + 63) & ~std::uintptr_t{63});
}

}  // namespace moe::cpu
