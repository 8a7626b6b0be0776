// Runs the real `moe` binary (MOE_BINARY, set by CMake) with arguments and collects its exit
// code and output, for tests of the command line.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace moe::testing {

struct CmdResult {
  int code = -1;    // exit code; -1 if it did not exit normally
  std::string out;  // stdout and stderr together
};

inline CmdResult run_moe(const std::string& args) {
  const std::string cmd = std::string(MOE_BINARY) + " " + args + " 2>&1";
  CmdResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace moe::testing
