// Where a rank learns who it is and where the rendezvous store lives. Jobs start under our own
// launcher (MOE_*), torchrun (RANK, WORLD_SIZE, MASTER_ADDR...), Open MPI (OMPI_COMM_WORLD_*)
// or Slurm (SLURM_PROCID...); the first family found wins, in that order.
#pragma once

#include <functional>
#include <string>

namespace moe::comm {

struct JobEnv {
  int rank = 0;                         // 3
  int size = 1;                         // 8
  int local_rank = 0;                   // rank on this host, 1
  int local_size = 1;                   // ranks on this host, 4
  std::string master_addr = "127.0.0.1";  // host of the store (rank 0 or the launcher)
  int master_port = 29400;              // store port
  std::string token;                    // job token proved on every connection
  bool token_is_derived = false;        // no MOE_JOB_TOKEN: a non-secret token from the job id
  bool store_external = false;          // the launcher hosts the store, rank 0 must not
  std::string source = "default";       // "moe", "torchrun", "openmpi", "slurm", "default"
};

// Reads the process environment (or `get`, for tests).
JobEnv detect_env();
JobEnv detect_env(const std::function<const char*(const char*)>& get);

// First host of a Slurm node list: "node[03-05,9],gpu1" -> "node03".
std::string slurm_first_host(const std::string& nodelist);

// A fresh random token (64 hex digits).
std::string random_token();

}  // namespace moe::comm
