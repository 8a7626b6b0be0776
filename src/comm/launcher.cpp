#include "comm/launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/common.h"
#include "comm/env.h"
#include "comm/store.h"

extern char** environ;

namespace moe::comm {

namespace {

volatile sig_atomic_t g_interrupt = 0;
void on_signal(int sig) { g_interrupt = sig; }

struct Child {
  pid_t pid = -1;
  int rank = 0;
  int out = -1, err = -1;   // read ends of the rank's stdout and stderr
  std::string out_buf, err_buf;
  bool running = true;
  int code = 0;
};

int code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// " (killed by signal 9, Killed)" for a rank a signal ended, else "".
std::string signal_note(int status) {
  if (!WIFSIGNALED(status)) return "";
  return " (killed by signal " + std::to_string(WTERMSIG(status)) + ", " +
         strsignal(WTERMSIG(status)) + ")";
}

// Variables the launcher owns are dropped from the inherited environment.
bool owned(const char* kv) {
  static const char* names[] = {"MOE_RANK=", "MOE_WORLD_SIZE=", "MOE_LOCAL_RANK=",
                                "MOE_LOCAL_WORLD_SIZE=", "MOE_MASTER_ADDR=", "MOE_MASTER_PORT=",
                                "MOE_JOB_TOKEN=", "MOE_STORE_EXTERNAL=", "MOE_RESTART_COUNT="};
  for (const char* n : names)
    if (std::strncmp(kv, n, std::strlen(n)) == 0) return true;
  return false;
}

using OnLine = std::function<void(int, const std::string&, bool)>;

// Interrupted, hung up on, or the reader of our output gone (`moe launch ... | head`): stop
// the ranks and return, rather than die and leave them running. Installed for all attempts, so
// a signal between two attempts is not lost; the old handlers come back however launch ends.
class StopSignals {
 public:
  StopSignals() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_interrupt = 0;
    for (int i = 0; i < 4; ++i) sigaction(kSignals[i], &sa, &old_[i]);
  }
  ~StopSignals() {
    for (int i = 0; i < 4; ++i) sigaction(kSignals[i], &old_[i], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr int kSignals[4] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
  struct sigaction old_[4] {};
};

// What one attempt needs besides the options: the inherited environment (`base`), where the
// store listens and its token, and which restart this is (0 = the first start).
struct Attempt {
  const std::vector<std::string>* base = nullptr;
  std::string token;
  int port = 0;
  int restart = 0;
};

// Starts every local rank once and runs until all have ended and their output is read.
// `*failed_status` gets the wait status of the first rank that failed.
LaunchResult run_attempt(const LaunchOptions& opt, const Attempt& at, const OnLine& on_line,
                         int* failed_status) {
  const int world = opt.nproc_per_node * opt.nnodes;
  const pid_t launcher_pid = getpid();
  const auto t0 = Clock::now();
  std::vector<Child> kids(opt.nproc_per_node);
  for (int l = 0; l < opt.nproc_per_node; ++l) {
    Child& k = kids[l];
    k.rank = opt.node_rank * opt.nproc_per_node + l;
    std::vector<std::string> env = *at.base;
    env.push_back("MOE_RANK=" + std::to_string(k.rank));
    env.push_back("MOE_WORLD_SIZE=" + std::to_string(world));
    env.push_back("MOE_LOCAL_RANK=" + std::to_string(l));
    env.push_back("MOE_LOCAL_WORLD_SIZE=" + std::to_string(opt.nproc_per_node));
    env.push_back("MOE_MASTER_ADDR=" + opt.master_addr);
    env.push_back("MOE_MASTER_PORT=" + std::to_string(at.port));
    env.push_back("MOE_JOB_TOKEN=" + at.token);
    env.push_back("MOE_STORE_EXTERNAL=1");
    env.push_back("MOE_RESTART_COUNT=" + std::to_string(at.restart));
    std::vector<char*> envp, argv;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = opt.cmd;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    int po[2], pe[2];
    MOE_CHECK(pipe2(po, O_CLOEXEC) == 0 && pipe2(pe, O_CLOEXEC) == 0, "launch", "pipe: ",
              std::strerror(errno));
    const pid_t pid = fork();
    MOE_CHECK(pid >= 0, "launch", "fork: ", std::strerror(errno));
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      setpgid(0, 0);  // the rank and anything it starts can be stopped as a group
      // A launcher that dies without stopping us (kill -9, a crash) takes the rank with it;
      // if it is already gone, so are we.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != launcher_pid) _exit(128 + SIGKILL);
      dup2(po[1], 1);
      dup2(pe[1], 2);
      execvpe(argv[0], argv.data(), envp.data());
      const char msg[] = "moe launch: cannot execute the command\n";
      [[maybe_unused]] ssize_t w = ::write(2, msg, sizeof msg - 1);
      _exit(127);
    }
    setpgid(pid, pid);
    close(po[1]);
    close(pe[1]);
    k.pid = pid;
    k.out = po[0];
    k.err = pe[0];
    if (opt.on_spawn) opt.on_spawn(k.rank, pid);
  }

  LaunchResult res;
  res.codes.assign(opt.nproc_per_node, 0);
  res.exit_seconds.assign(opt.nproc_per_node, 0);
  bool stopping = false;
  Deadline kill_at = Deadline::max();
  auto stop_all = [&](int sig) {
    for (auto& k : kids)
      if (k.running) kill(-k.pid, sig);
  };
  auto drain = [&](Child& k, int& fd, std::string& buf, bool is_err) {
    char tmp[65536];
    const ssize_t r = ::read(fd, tmp, sizeof tmp);
    if (r <= 0) {
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
      if (!buf.empty()) on_line(k.rank, buf, is_err);
      buf.clear();
      close(fd);
      fd = -1;
      return;
    }
    buf.append(tmp, static_cast<size_t>(r));
    size_t pos;
    while ((pos = buf.find('\n')) != std::string::npos) {
      on_line(k.rank, buf.substr(0, pos), is_err);
      buf.erase(0, pos + 1);
    }
  };
  Deadline pipes_done_by = Deadline::max();
  while (true) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Child*, bool>> who;
    for (auto& k : kids) {
      if (k.out >= 0) fds.push_back({k.out, POLLIN, 0}), who.emplace_back(&k, false);
      if (k.err >= 0) fds.push_back({k.err, POLLIN, 0}), who.emplace_back(&k, true);
    }
    bool any_running = false;
    for (auto& k : kids) any_running |= k.running;
    if (!any_running && (fds.empty() || Clock::now() > pipes_done_by)) break;
    if (!fds.empty()) {
      ::poll(fds.data(), fds.size(), 20);
      for (size_t i = 0; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        Child& k = *who[i].first;
        if (who[i].second) drain(k, k.err, k.err_buf, true);
        else drain(k, k.out, k.out_buf, false);
      }
    } else {
      ::usleep(20000);
    }
    for (size_t l = 0; l < kids.size(); ++l) {
      Child& k = kids[l];
      if (!k.running) continue;
      int status = 0;
      if (waitpid(k.pid, &status, WNOHANG) != k.pid) continue;
      k.running = false;
      k.code = code_of(status);
      res.codes[l] = k.code;
      res.exit_seconds[l] = std::chrono::duration<double>(Clock::now() - t0).count();
      if (k.code != 0 && res.failed_rank < 0 && !stopping) {
        res.failed_rank = k.rank;
        res.exit_code = k.code;
        *failed_status = status;
        if (opt.stop_others_on_failure) {
          std::fprintf(stderr, "moe launch: rank %d exited with code %d%s; stopping the others\n",
                       k.rank, k.code, signal_note(status).c_str());
          stopping = true;
          stop_all(SIGTERM);
          kill_at = deadline_after(opt.kill_grace_s);
        }
      }
    }
    if (!any_running && pipes_done_by == Deadline::max()) pipes_done_by = deadline_after(1);
    if (g_interrupt && !stopping) {
      std::fprintf(stderr, "moe launch: %s; stopping the ranks\n", strsignal(g_interrupt));
      stopping = true;
      stop_all(SIGTERM);
      kill_at = deadline_after(opt.kill_grace_s);
      if (res.failed_rank < 0) res.exit_code = 128 + g_interrupt;
    }
    if (stopping && Clock::now() > kill_at) {
      stop_all(SIGKILL);
      kill_at = Deadline::max();
    }
  }
  for (auto& k : kids) {
    if (k.out >= 0) close(k.out);
    if (k.err >= 0) close(k.err);
  }
  return res;
}

}  // namespace

LaunchResult launch(const LaunchOptions& opt) {
  MOE_CHECK(!opt.cmd.empty(), "launch", "no command: use moe launch --nproc-per-node N -- CMD");
  MOE_CHECK(opt.nproc_per_node >= 1 && opt.nnodes >= 1 && opt.node_rank >= 0 &&
                opt.node_rank < opt.nnodes,
            "launch", "need --nproc-per-node >= 1 and 0 <= --node-rank < --nnodes");
  MOE_CHECK(opt.max_restarts >= 0, "launch", "--max-restarts ", opt.max_restarts,
            ": need 0 (never restart) or more");
  // Restarting needs every node to stop its ranks and start them again against a fresh store
  // together; nothing tells node 1 that node 0 restarted, so its ranks would wait on a store
  // that is gone. A scheduler that restarts the whole job does agree.
  MOE_CHECK(opt.max_restarts == 0 || opt.nnodes == 1, "launch", "--max-restarts ",
            opt.max_restarts, " with --nnodes ", opt.nnodes,
            ": restarts need the nodes to agree, which moe launch does not do; run every node "
            "with --max-restarts 0 under a scheduler that restarts the whole job when one node "
            "fails (sbatch --requeue, a Kubernetes Job), or use one node");
  MOE_CHECK(opt.nnodes == 1 || opt.master_port > 0, "launch",
            "several nodes need an agreed --master-port");
  const std::string user_token = env_str("MOE_JOB_TOKEN", "");
  MOE_CHECK(opt.nnodes == 1 || !user_token.empty(), "launch",
            "several nodes need a shared secret: export MOE_JOB_TOKEN=$(openssl rand -hex 32) "
            "with the same value on every node");
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e)
    if (!owned(*e)) base.push_back(*e);
  for (const auto& [k, v] : opt.env) base.push_back(k + "=" + v);

  const OnLine on_line = opt.on_line ? opt.on_line : [](int r, const std::string& line,
                                                        bool is_err) {
    std::FILE* f = is_err ? stderr : stdout;
    std::fprintf(f, "[%d] %s\n", r, line.c_str());
    std::fflush(f);
  };

  StopSignals stop_signals;
  std::unique_ptr<StoreServer> store;
  LaunchResult res;
  for (int restart = 0;; ++restart) {
    // A fresh rendezvous for every attempt: the last attempt's store (and its keys) is closed
    // before the new one listens, so a fixed --master-port is free again, and a generated token
    // is new, so a straggler of the last attempt cannot join this one.
    Attempt at;
    at.base = &base;
    at.token = user_token.empty() ? random_token() : user_token;
    at.port = opt.master_port;
    at.restart = restart;
    store.reset();
    if (opt.node_rank == 0) {
      store = std::make_unique<StoreServer>("", opt.master_port, at.token);
      at.port = store->port();
    }
    int failed_status = 0;
    res = run_attempt(opt, at, on_line, &failed_status);
    res.restarts = restart;
    if (res.failed_rank < 0 || g_interrupt || restart == opt.max_restarts) break;
    std::fprintf(stderr,
                 "moe launch: rank %d exited with code %d%s; restarting the job (restart %d of "
                 "%d)\n",
                 res.failed_rank, res.exit_code, signal_note(failed_status).c_str(), restart + 1,
                 opt.max_restarts);
  }
  return res;
}

}  // namespace moe::comm
