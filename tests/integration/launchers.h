// Open MPI's mpirun and Slurm's srun for the system tests: whether each can run here (the skip
// reason when not) and `moe ARGS` under each on this host. Neither is a dependency of the
// project: Open MPI comes with `bash scripts/setup.sh test`; Slurm needs a running slurmctld
// and slurmd, which `scripts/slurm_local.sh` sets up on one machine.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>

#include "run_binary.h"

namespace moe::testing {

// A fresh folder for one distributed test, removed at the end: /tmp/moe_<prefix>_<name>_<pid>.
struct DistTempDir {
  std::filesystem::path path;
  DistTempDir(const std::string& prefix, const std::string& name) {
    path = std::filesystem::temp_directory_path() /
           ("moe_" + prefix + "_" + name + "_" + std::to_string(getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~DistTempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

// One thread per rank (2 cores; ranks oversubscribe them), bounded in time.
inline constexpr const char* kDistEnv =
    "OMP_NUM_THREADS=1 MOE_COMM_TIMEOUT=60 MOE_COMM_CONNECT_TIMEOUT=30 timeout 300 ";

// A port nobody listens on now (bound to 0 and released), for the store of one test run.
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// "" when Open MPI's mpirun is usable here, else why not (the skip message).
inline std::string why_no_openmpi() {
  const auto [code, out] = run_command("mpirun --version");
  if (code != 0)
    return "mpirun not found (Open MPI comes with `bash scripts/setup.sh test`): " + out;
  if (out.find("Open MPI") == std::string::npos)
    return "mpirun is not Open MPI (only OMPI_COMM_WORLD_* is read): " + out;
  return "";
}

// `mpirun -np N moe ARGS` on this host. As root Open MPI wants both the flag and the two
// variables. The launcher's and torchrun's variables are removed so that only Open MPI's can
// be found; no MOE_JOB_TOKEN, so the token is derived from the job id as for a plain user.
// MOE_MASTER_PORT: a free port, since the default 29400 may be held by another job.
inline std::pair<int, std::string> mpirun_moe(int np, const std::string& args) {
  return run_command(
      "env -u MOE_RANK -u MOE_WORLD_SIZE -u MOE_JOB_TOKEN -u MOE_MASTER_ADDR -u RANK "
      "-u WORLD_SIZE -u SLURM_PROCID OMPI_ALLOW_RUN_AS_ROOT=1 "
      "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MOE_MASTER_PORT=" +
      std::to_string(free_port()) +
      " MOE_COMM_CONNECT_TIMEOUT=30 MOE_COMM_TIMEOUT=60 "
      "timeout 150 mpirun --allow-run-as-root --oversubscribe --bind-to none --timeout 120 -np " +
      std::to_string(np) + " " + MOE_BINARY + " " + args);
}

// "" when srun can start a job step here (a controller and a node answer), else why not.
inline std::string why_no_slurm() {
  const auto [code, out] = run_command("timeout 30 srun -n 1 --time=1 true");
  if (code != 0)
    return "no usable Slurm here (`srun -n 1 true` exited " + std::to_string(code) + "): " + out;
  return "";
}

// `srun -n N -O moe ARGS` (-O: more tasks than the node has CPUs). As under mpirun, the other
// launchers' variables are removed and no token is set; the store port is the one derived
// from the job and step id.
inline std::pair<int, std::string> srun_moe(int np, const std::string& args) {
  return run_command(
      "env -u MOE_RANK -u MOE_WORLD_SIZE -u MOE_JOB_TOKEN -u MOE_MASTER_ADDR -u MOE_MASTER_PORT "
      "-u RANK -u WORLD_SIZE -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE "
      "MOE_COMM_CONNECT_TIMEOUT=30 MOE_COMM_TIMEOUT=60 timeout 150 srun -O --time=3 -n " +
      std::to_string(np) + " " + MOE_BINARY + " " + args);
}

}  // namespace moe::testing
