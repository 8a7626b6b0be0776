// Minimal logging to stderr with a level set by MOE_LOG_LEVEL (error, warn, info, debug).
#pragma once

#include <cstdio>
#include <string>

namespace moe::log {

enum class Level { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

Level level();
void write(Level lv, const std::string& msg);

inline void error(const std::string& m) { write(Level::kError, m); }
inline void warn(const std::string& m) { write(Level::kWarn, m); }
inline void info(const std::string& m) { write(Level::kInfo, m); }
inline void debug(const std::string& m) { write(Level::kDebug, m); }

}  // namespace moe::log
