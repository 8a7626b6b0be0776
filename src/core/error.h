// Errors: MOE_CHECK throws moe::Error whose message starts with "[op]" and says how to fix it.
// Library code never exits; main() turns an Error into one clear line and a non-zero exit code.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] void throw_error(const char* op, Args&&... args) {
  std::ostringstream os;
  os << "[" << op << "] ";
  (os << ... << std::forward<Args>(args));
  throw Error(os.str());
}
}  // namespace detail

}  // namespace moe

// MOE_CHECK(cond, "op", message parts...): the first part names the operation.
#define MOE_CHECK(cond, op, ...)                              \
  do {                                                        \
    if (!(cond)) ::moe::detail::throw_error(op, __VA_ARGS__); \
  } while (0)

#define MOE_FAIL(op, ...) ::moe::detail::throw_error(op, __VA_ARGS__)
