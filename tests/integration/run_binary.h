// Runs programs for the command-line tests: the real `moe` binary (MOE_BINARY, set by CMake)
// or any shell command, collecting the exit code and the output.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <utility>

namespace moe::testing {

// (exit code, stdout and stderr together); a program killed by signal S gives 128 + S, as a
// shell would report it; -1 if it could not be run.
inline std::pair<int, std::string> run_command(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  if (WIFSIGNALED(status)) return {128 + WTERMSIG(status), out};
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// How many times `what` occurs in `text`.
inline int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// `moe ARGS`.
inline std::pair<int, std::string> run_moe(const std::string& args) {
  return run_command(std::string(MOE_BINARY) + " " + args);
}

}  // namespace moe::testing
