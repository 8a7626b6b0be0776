#include "train/metrics.h"

#include <unistd.h>

#include <filesystem>

#include "core/error.h"

namespace moe {

MetricsLog::MetricsLog(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  f_ = std::fopen(path.c_str(), "a");
  MOE_CHECK(f_ != nullptr, "metrics", "cannot append to '", path,
            "'; check that the run folder is writable");
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const nlohmann::json& record) {
  if (!f_) return;
  const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::fprintf(f_, "%s\n", line.c_str());
  std::fflush(f_);
}

void MetricsLog::event(int64_t step, const std::string& event, const std::string& detail) {
  write({{"kind", "event"}, {"step", step}, {"event", event}, {"detail", detail}});
}

Progress::Progress(const std::string& mode) {
  silent_ = mode == "silent";
  quiet_ = mode == "none" || silent_;
  live_ = mode == "auto" && ::isatty(STDOUT_FILENO);
}

void Progress::update(const std::string& line, bool keep) {
  if (quiet_) return;
  if (live_) {
    std::printf("\r\033[K%s", line.c_str());
    dirty_ = true;
    if (keep) std::printf("\n"), dirty_ = false;
  } else if (keep) {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

void Progress::message(const std::string& line) {
  if (silent_) return;
  if (dirty_) std::printf("\r\033[K"), dirty_ = false;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void Progress::finish() {
  if (dirty_) std::printf("\n"), dirty_ = false;
  std::fflush(stdout);
}

}  // namespace moe
