#include "comm/transport/buffers.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace moe::comm {

BufferRegistry::~BufferRegistry() {
  for (auto& [base, r] : by_base_) {
    munmap(r.base, r.bytes);
    ::close(r.fd);
  }
}

SharedRegion BufferRegistry::allocate(uint64_t bytes) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  SharedRegion r;
  r.bytes = std::max<uint64_t>(page, (bytes + page - 1) / page * page);
  r.fd = memfd_create("moe-comm-buffer", MFD_CLOEXEC);
  MOE_CHECK(r.fd >= 0, "comm.alloc", "memfd_create for a ", bytes,
            "-byte buffer: ", std::strerror(errno));
  if (ftruncate(r.fd, off_t(r.bytes)) != 0) {
    const int e = errno;
    ::close(r.fd);
    MOE_FAIL("comm.alloc", "ftruncate of a ", r.bytes, "-byte buffer: ", std::strerror(e),
             " (is the memory or /dev/shm size limit reached?)");
  }
  void* p = mmap(nullptr, r.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    ::close(r.fd);
    MOE_FAIL("comm.alloc", "mmap of a ", r.bytes, "-byte buffer: ", std::strerror(e));
  }
  r.base = static_cast<char*>(p);
  std::lock_guard<std::mutex> lock(mu_);
  r.id = next_id_++;
  by_base_[reinterpret_cast<uintptr_t>(r.base)] = r;
  return r;
}

void BufferRegistry::release(void* base) {
  SharedRegion r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = by_base_.find(reinterpret_cast<uintptr_t>(base));
    MOE_CHECK(it != by_base_.end(), "comm.alloc", "releasing ", base,
              ": not a buffer from Communicator::alloc (or released twice)");
    r = it->second;
    by_base_.erase(it);
    munmap(r.base, r.bytes);
    ::close(r.fd);
    if (on_release_) on_release_();
  }
}

void BufferRegistry::set_release_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  on_release_ = std::move(hook);
}

bool BufferRegistry::find(const void* p, uint64_t n, SharedRegion* out) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_base_.upper_bound(a);
  if (it == by_base_.begin()) return false;
  --it;
  const SharedRegion& r = it->second;
  if (a + n > it->first + r.bytes) return false;
  *out = r;
  return true;
}

uint64_t BufferRegistry::live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_base_.size();
}

}  // namespace moe::comm
