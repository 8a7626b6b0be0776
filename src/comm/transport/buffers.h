// Buffers the library allocates for its callers (Communicator::alloc), so that ranks on one
// host can map each other's: NCCL's user-buffer registration, for CPUs.
//
// Each allocation is its own memfd (memfd_create + mmap MAP_SHARED), kept open while the
// buffer lives. A shared-memory single-copy offer of bytes inside such a buffer names the fd,
// and the receiver takes a duplicate of it with pidfd_getfd(2) (the same ptrace permission as
// process_vm_readv), maps it once and from then on copies with plain loads and stores, or
// reduces straight from the peer's memory, with no staging copy. Nothing has a name in
// /dev/shm, so nothing is left behind when processes die.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

namespace moe::comm {

struct SharedRegion {
  uint64_t id = 0;       // unique within the process, never reused
  char* base = nullptr;  // where the owner maps it
  uint64_t bytes = 0;    // mapped length (a multiple of the page size)
  int fd = -1;           // the owner's memfd
};

class BufferRegistry {
 public:
  BufferRegistry() = default;
  ~BufferRegistry();
  BufferRegistry(const BufferRegistry&) = delete;
  BufferRegistry& operator=(const BufferRegistry&) = delete;

  // A zeroed buffer of at least `bytes` (page-aligned); throws moe::Error naming the call
  // that failed.
  SharedRegion allocate(uint64_t bytes);
  // Unmaps and closes what allocate returned; an unknown pointer is an error.
  void release(void* base);
  // The region that holds all of [p, p + n), if any.
  bool find(const void* p, uint64_t n, SharedRegion* out) const;
  uint64_t live() const;  // regions allocated and not yet released
  // Called (under the registry's lock) after each release: the shared-memory transport tells
  // the peers, who drop their mappings so the memory really goes. nullptr: nobody.
  void set_release_hook(std::function<void()> hook);

 private:
  mutable std::mutex mu_;
  std::function<void()> on_release_;
  std::map<uintptr_t, SharedRegion> by_base_;
  uint64_t next_id_ = 1;
};

}  // namespace moe::comm
