#include "comm/common.h"

#include <sched.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace moe::comm {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kNone:
      return "none";
    case OpKind::kAllReduce:
      return "all_reduce";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kAllGather:
      return "all_gather";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kAllToAll:
      return "all_to_all";
    case OpKind::kAllToAllv:
      return "all_to_allv";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kSendRecv:
      return "send/recv";
    case OpKind::kSplit:
      return "split";
    case OpKind::kBye:
      return "shutdown";
    case OpKind::kAbort:
      return "abort";
    default:
      return "unknown";
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "unknown";
}

ReduceOp parse_reduce_op(const std::string& s) {
  if (s == "sum") return ReduceOp::kSum;
  if (s == "avg") return ReduceOp::kAvg;
  if (s == "max") return ReduceOp::kMax;
  if (s == "min") return ReduceOp::kMin;
  MOE_FAIL("comm", "unknown reduction '", s, "': use sum, avg, max or min");
}

size_t comm_dtype_size(Dtype t) {
  switch (t) {
    case Dtype::kF32:
    case Dtype::kI32:
      return 4;
    case Dtype::kF64:
    case Dtype::kI64:
      return 8;
    case Dtype::kBF16:
    case Dtype::kF16:
      return 2;
    default:
      break;
  }
  MOE_FAIL("comm", "element type ", static_cast<int>(t),
           " is not supported by collectives: use f32, f64, bf16, f16, i32 or i64");
}

const char* comm_dtype_name(Dtype t) {
  switch (t) {
    case Dtype::kF32:
      return "float";
    case Dtype::kF64:
      return "double";
    case Dtype::kBF16:
      return "bfloat16";
    case Dtype::kF16:
      return "half";
    case Dtype::kI32:
      return "int32";
    case Dtype::kI64:
      return "int64";
    default:
      return "unsupported";
  }
}

Dtype parse_comm_dtype(const std::string& s) {
  if (s == "f32" || s == "float") return Dtype::kF32;
  if (s == "f64" || s == "double") return Dtype::kF64;
  if (s == "bf16" || s == "bfloat16") return Dtype::kBF16;
  if (s == "f16" || s == "half") return Dtype::kF16;
  if (s == "i32" || s == "int32") return Dtype::kI32;
  if (s == "i64" || s == "int64") return Dtype::kI64;
  MOE_FAIL("comm", "unknown element type '", s, "': use f32, f64, bf16, f16, i32 or i64");
}

bool is_float_dtype(Dtype t) { return t != Dtype::kI32 && t != Dtype::kI64; }

void check_dtype_op(Dtype t, ReduceOp op, const char* where) {
  comm_dtype_size(t);
  MOE_CHECK(op != ReduceOp::kAvg || is_float_dtype(t), where, "avg of ", comm_dtype_name(t),
            " would truncate: use sum and divide, or a floating type");
}

std::string env_str(const char* name, const std::string& def) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : def;
}

int64_t env_int(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  MOE_CHECK(end && *end == '\0', "comm", name, "='", v, "' is not an integer");
  return x;
}

double env_double(const char* name, double def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  MOE_CHECK(end && *end == '\0', "comm", name, "='", v, "' is not a number");
  return x;
}

size_t stream_min_bytes() {
  static const size_t v = static_cast<size_t>(env_int("MOE_COMM_STREAM_MIN", 1 << 20));
  return v;
}

void copy_block(void* dst, const void* src, size_t n, size_t stream_min) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#if defined(__SSE2__)
  const bool overlap = d < s + n && s < d + n;
  if (stream_min > 0 && n >= stream_min && !overlap) {
    const size_t head = std::min(n, (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
    std::memcpy(d, s, head);
    size_t i = head;
    for (; i + 64 <= n; i += 64) {
      const __m128i a0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m128i a1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      const __m128i a2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
      const __m128i a3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a0);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), a1);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), a2);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), a3);
    }
    _mm_sfence();  // the streamed lines are visible before anyone is told the copy is done
    std::memcpy(d + i, s + i, n - i);
    return;
  }
#else
  (void)stream_min;
#endif
  if (n) std::memmove(d, s, n);
}

double default_spin_us(int local_ranks) { return local_ranks <= usable_cpus() ? 1000 : 50; }

int usable_cpus() {
  cpu_set_t cpus;
  return sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? std::max(1, CPU_COUNT(&cpus)) : 1;
}

int ms_until(Deadline d) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

LogLevel log_level() {
  static const LogLevel lv = [] {
    const std::string s = env_str("MOE_LOG_LEVEL", "info");
    if (s == "error") return LogLevel::kError;
    if (s == "warn") return LogLevel::kWarn;
    if (s == "debug") return LogLevel::kDebug;
    return LogLevel::kInfo;
  }();
  return lv;
}

void log_write(LogLevel lv, const std::string& msg) {
  static std::mutex mu;
  static const char* names[] = {"error", "warn", "info", "debug"};
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[moe %s] %s\n", names[static_cast<int>(lv)], msg.c_str());
}

}  // namespace moe::comm
