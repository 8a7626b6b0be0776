// Arenas and tensor views (DESIGN.md section 2): parameters, gradients, optimizer moments and
// activations each live in one arena, carved into views. A view owns nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace moe {

// A row-major view: shape up to 4 dims, contiguous.
struct TensorView {
  void* data = nullptr;
  Dtype dtype = Dtype::kF32;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t bytes() const { return size_t(numel()) * dtype_size(dtype); }
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
  std::string shape_str() const;  // "(8, 512, 64) bf16"
};

// One 64-byte-aligned allocation handed out front to back. Allocation never moves earlier
// views; reset() forgets them all at once (activations between steps).
class Arena {
 public:
  static constexpr size_t kAlign = 64;  // a cache line, and an AVX-512 register

  Arena() = default;
  explicit Arena(size_t capacity_bytes, std::string name = "arena");
  Arena(Arena&&) noexcept = default;
  Arena& operator=(Arena&&) noexcept = default;

  // Throws naming the arena, the request and what is left when it does not fit.
  TensorView alloc(Dtype t, std::initializer_list<int64_t> shape);
  void* alloc_bytes(size_t bytes);
  void reset() { used_ = 0; }
  void zero();  // sets every byte handed out so far to 0

  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  const std::string& name() const { return name_; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<uint8_t, Free> base_;
  size_t capacity_ = 0, used_ = 0;
  std::string name_ = "arena";
};

}  // namespace moe
