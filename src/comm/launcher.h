// `moe launch`: starts the ranks of one node as child processes with the environment that
// Communicator::from_env() reads, hosts the rendezvous store (on node 0), prefixes every output
// line with the rank, and stops the whole job when one rank fails, returning that rank's code.
// With max_restarts N > 0 (one node only) a failed job is started again, all ranks with a fresh
// store and token, up to N times (torchrun's --max-restarts); each rank sees MOE_RESTART_COUNT.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moe::comm {

struct LaunchOptions {
  int nproc_per_node = 1;                 // 4
  int nnodes = 1;                         // 2
  int node_rank = 0;                      // 0..nnodes-1
  std::string master_addr = "127.0.0.1";  // host of node 0 (where the store runs)
  int master_port = 0;                    // 29400; 0 = any free port (one node only)
  std::vector<std::string> cmd;           // {"./train", "--steps", "10"}
  std::vector<std::pair<std::string, std::string>> env;  // extra variables for every rank
  bool stop_others_on_failure = true;     // tests of failure detection turn this off
  double kill_grace_s = 3;                // SIGTERM, then SIGKILL after this
  // Restarts of the whole job after a rank fails (exits non-zero or dies by a signal); not
  // after the launcher is stopped (SIGINT, SIGTERM, SIGHUP, SIGPIPE). Every rank of attempt k
  // gets MOE_RESTART_COUNT=k. One node only (nodes do not agree on restarts).
  int max_restarts = 0;                   // 2: up to 3 attempts; 0: never restart
  // Each output line (rank, line, from stderr); default: print "[rank] line".
  std::function<void(int, const std::string&, bool)> on_line;
  std::function<void(int, pid_t)> on_spawn;  // called with each rank's pid
};

// After restarts, everything but `restarts` is the last attempt's.
struct LaunchResult {
  int exit_code = 0;        // of the first rank that failed, else 0 (signals: 128 + signal)
  int failed_rank = -1;     // global rank of that first failure
  std::vector<int> codes;   // exit code of each local rank
  std::vector<double> exit_seconds;  // when each local rank ended, from the attempt's start
  int restarts = 0;         // 1: the job was started twice
};

LaunchResult launch(const LaunchOptions& opt);

}  // namespace moe::comm
