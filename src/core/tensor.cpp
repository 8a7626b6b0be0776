#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace moe {

std::string TensorView::shape_str() const {
  std::ostringstream s;
  s << "(";
  for (int i = 0; i < ndim; ++i) s << (i ? ", " : "") << shape[i];
  s << ") " << dtype_name(dtype);
  return s.str();
}

void Arena::Free::operator()(void* p) const { std::free(p); }

Arena::Arena(size_t capacity_bytes, std::string name) : name_(std::move(name)) {
  const size_t cap = (capacity_bytes + kAlign - 1) / kAlign * kAlign;
  if (cap > 0) {
    void* p = std::aligned_alloc(kAlign, cap);
    MOE_CHECK(p != nullptr, "arena", name_, ": cannot allocate ", cap,
              " bytes; lower the batch size or the model size");
    base_.reset(static_cast<uint8_t*>(p));
  }
  capacity_ = cap;
}

void* Arena::alloc_bytes(size_t bytes) {
  const size_t n = (bytes + kAlign - 1) / kAlign * kAlign;
  MOE_CHECK(n <= capacity_ - used_, "arena", name_, ": request of ", bytes, " bytes does not fit (",
            capacity_ - used_, " of ", capacity_, " left); size the arena for the largest step");
  void* p = base_.get() + used_;
  used_ += n;
  return p;
}

TensorView Arena::alloc(Dtype t, std::initializer_list<int64_t> shape) {
  MOE_CHECK(shape.size() >= 1 && shape.size() <= 4, "arena", name_, ": views have 1 to 4 dims, got ",
            shape.size());
  TensorView v;
  v.dtype = t;
  for (int64_t d : shape) {
    MOE_CHECK(d >= 0, "arena", name_, ": negative dimension ", d);
    v.shape[v.ndim++] = d;
  }
  v.data = alloc_bytes(v.bytes());
  return v;
}

void Arena::zero() {
  if (used_ > 0) std::memset(base_.get(), 0, used_);
}

}  // namespace moe
