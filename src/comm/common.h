// Shared vocabulary of moe::comm: reduction ops, operation kinds, element types, deadlines,
// environment knobs and logging. The library links nothing of the model, so it keeps its own
// small logger (same format and MOE_LOG_LEVEL as src/core/log.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace moe::comm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

enum class ReduceOp : uint8_t { kSum = 0, kAvg = 1, kMax = 2, kMin = 3 };

// What a message belongs to; carried in every header so mismatched collectives are caught.
enum class OpKind : uint8_t {
  kNone = 0,
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kAllToAll,
  kAllToAllv,
  kBarrier,
  kSendRecv,
  kSplit,
  kBye,    // a rank closing its transport on purpose
  kAbort,  // a rank that failed, with the reason as payload
  kCount
};

const char* op_kind_name(OpKind k);
const char* reduce_op_name(ReduceOp op);
ReduceOp parse_reduce_op(const std::string& s);  // "sum", "avg", "max", "min"

// The element types collectives accept: f32 f64 bf16 f16 i32 i64.
size_t comm_dtype_size(Dtype t);
const char* comm_dtype_name(Dtype t);
Dtype parse_comm_dtype(const std::string& s);
bool is_float_dtype(Dtype t);
// Throws if `t` is not a collective type, or if `op` does not apply to it (avg on integers).
void check_dtype_op(Dtype t, ReduceOp op, const char* where);

// Environment knobs: value of `name`, or `def` when unset or empty.
std::string env_str(const char* name, const std::string& def = "");
int64_t env_int(const char* name, int64_t def);
double env_double(const char* name, double def);

// CPUs this process may run on (its affinity mask): waiters spin only when the ranks of a
// host fit on them.
int usable_cpus();
// Default spin of a waiter before it sleeps, in microseconds, for `local_ranks` ranks on this
// host: 1000 when they fit on usable_cpus(), else 50 (a yield then hands the core to a peer
// with work; shm.h has the figures).
double default_spin_us(int local_ranks);

// Bytes from which copy_block streams (MOE_COMM_STREAM_MIN, default 1 MiB; 0: never).
size_t stream_min_bytes();
// Copies n bytes like memmove. From `stream_min` bytes on (and when the ranges do not
// overlap) it writes with non-temporal stores: the destination's cache lines are not read
// first and do not evict what the caches hold. all_to_all's own block goes this way: with
// every rank copying at once the memory bus is the limit, and 2 ranks on shared memory went
// from 2.26 to 2.93 GB/s at 64 MiB and from 5.3 to 7.4 at 4 MiB (bench/comm/README.md).
void copy_block(void* dst, const void* src, size_t n, size_t stream_min = stream_min_bytes());

inline Deadline deadline_after(double seconds) {
  return Clock::now() + std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}
// Milliseconds left until `d` (0 if past), capped for poll().
int ms_until(Deadline d);

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };
LogLevel log_level();
void log_write(LogLevel lv, const std::string& msg);

template <class... Args>
void log_at(LogLevel lv, Args&&... args) {
  if (static_cast<int>(lv) > static_cast<int>(log_level())) return;
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  log_write(lv, os.str());
}
#define MOE_COMM_WARN(...) ::moe::comm::log_at(::moe::comm::LogLevel::kWarn, __VA_ARGS__)
#define MOE_COMM_INFO(...) ::moe::comm::log_at(::moe::comm::LogLevel::kInfo, __VA_ARGS__)
#define MOE_COMM_DEBUG(...) ::moe::comm::log_at(::moe::comm::LogLevel::kDebug, __VA_ARGS__)

}  // namespace moe::comm
