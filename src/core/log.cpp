#include "core/log.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace moe::log {

Level level() {
  static const Level lv = [] {
    const char* s = std::getenv("MOE_LOG_LEVEL");
    if (!s) return Level::kInfo;
    if (!std::strcmp(s, "error")) return Level::kError;
    if (!std::strcmp(s, "warn")) return Level::kWarn;
    if (!std::strcmp(s, "debug")) return Level::kDebug;
    return Level::kInfo;
  }();
  return lv;
}

void write(Level lv, const std::string& msg) {
  if (static_cast<int>(lv) > static_cast<int>(level())) return;
  static std::mutex mu;
  static const char* names[] = {"error", "warn", "info", "debug"};
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[moe %s] %s\n", names[static_cast<int>(lv)], msg.c_str());
}

}  // namespace moe::log
