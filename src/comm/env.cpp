#include "comm/env.h"

#include <openssl/rand.h>

#include <cstdlib>

#include "comm/common.h"

namespace moe::comm {

namespace {

int to_int(const char* name, const char* v) {
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  MOE_CHECK(end && *end == '\0' && x >= 0, "comm.env", name, "='", v,
            "' is not a non-negative integer");
  return static_cast<int>(x);
}

}  // namespace

std::string slurm_first_host(const std::string& nodelist) {
  // The first entry ends at a ',' outside brackets; a bracket range keeps its first number.
  std::string out;
  for (size_t i = 0; i < nodelist.size(); ++i) {
    const char c = nodelist[i];
    if (c == ',') break;
    if (c == '[') {
      size_t j = i + 1;
      while (j < nodelist.size() && nodelist[j] != '-' && nodelist[j] != ',' && nodelist[j] != ']')
        out += nodelist[j++];
      while (j < nodelist.size() && nodelist[j] != ']') ++j;
      i = j;
      continue;
    }
    out += c;
  }
  return out;
}

std::string random_token() {
  unsigned char b[32];
  MOE_CHECK(RAND_bytes(b, sizeof b) == 1, "comm.env", "OpenSSL could not make random bytes");
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += hex[c >> 4];
    s += hex[c & 15];
  }
  return s;
}

JobEnv detect_env() {
  return detect_env([](const char* n) { return std::getenv(n); });
}

JobEnv detect_env(const std::function<const char*(const char*)>& get_raw) {
  auto get = [&](const char* n) -> const char* {
    const char* v = get_raw(n);
    return v && *v ? v : nullptr;
  };
  auto num = [&](const char* n, int def) { return get(n) ? to_int(n, get(n)) : def; };
  JobEnv e;
  std::string job_id;
  if (get("MOE_RANK")) {
    e.source = "moe";
    e.rank = num("MOE_RANK", 0);
    e.size = num("MOE_WORLD_SIZE", 1);
    e.local_rank = num("MOE_LOCAL_RANK", e.rank);
    e.local_size = num("MOE_LOCAL_WORLD_SIZE", e.size);
  } else if (get("RANK") && get("WORLD_SIZE")) {
    e.source = "torchrun";
    e.rank = num("RANK", 0);
    e.size = num("WORLD_SIZE", 1);
    e.local_rank = num("LOCAL_RANK", e.rank);
    e.local_size = num("LOCAL_WORLD_SIZE", e.size);
    if (get("TORCHELASTIC_RUN_ID")) job_id = get("TORCHELASTIC_RUN_ID");
  } else if (get("OMPI_COMM_WORLD_RANK")) {
    e.source = "openmpi";
    e.rank = num("OMPI_COMM_WORLD_RANK", 0);
    e.size = num("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = num("OMPI_COMM_WORLD_LOCAL_RANK", e.rank);
    e.local_size = num("OMPI_COMM_WORLD_LOCAL_SIZE", e.size);
    // The job id: OMPI_MCA_ess_base_jobid in Open MPI 3 to 4.1 (seen under mpirun 4.1.4),
    // OMPI_MCA_orte_ess_jobid in older releases.
    if (get("OMPI_MCA_ess_base_jobid"))
      job_id = get("OMPI_MCA_ess_base_jobid");
    else if (get("OMPI_MCA_orte_ess_jobid"))
      job_id = get("OMPI_MCA_orte_ess_jobid");
  } else if (get("SLURM_PROCID")) {
    e.source = "slurm";
    e.rank = num("SLURM_PROCID", 0);
    e.size = num("SLURM_NTASKS", 1);
    e.local_rank = num("SLURM_LOCALID", e.rank);
    e.local_size = e.size;
    if (get("SLURM_NTASKS_PER_NODE")) {
      // "4" or "4(x2)": the first number is this node's count in the common case.
      e.local_size = std::atoi(get("SLURM_NTASKS_PER_NODE"));
    }
    if (get("SLURM_JOB_ID")) job_id = get("SLURM_JOB_ID");
    if (get("SLURM_STEP_ID")) job_id += std::string(".") + get("SLURM_STEP_ID");
  }
  MOE_CHECK(e.size >= 1 && e.rank < e.size, "comm.env", "rank ", e.rank, " is outside world size ",
            e.size, " (from the ", e.source, " environment)");
  MOE_CHECK(e.local_size >= 1 && e.local_rank < e.local_size, "comm.env", "local rank ",
            e.local_rank, " is outside local size ", e.local_size);

  const bool multi_host = e.local_size < e.size;
  if (get("MOE_MASTER_ADDR"))
    e.master_addr = get("MOE_MASTER_ADDR");
  else if (get("MASTER_ADDR"))
    e.master_addr = get("MASTER_ADDR");
  else if (e.source == "slurm" && multi_host && get("SLURM_JOB_NODELIST"))
    e.master_addr = slurm_first_host(get("SLURM_JOB_NODELIST"));
  else
    MOE_CHECK(!multi_host, "comm.env",
              "ranks span several hosts but MOE_MASTER_ADDR is not "
              "set: export MOE_MASTER_ADDR=<host of rank 0> on every rank");

  if (get("MOE_MASTER_PORT")) {
    e.master_port = num("MOE_MASTER_PORT", 0);
  } else if (get("MASTER_PORT")) {
    e.master_port = num("MASTER_PORT", 0);
    // torchrun's agent already serves its own store on MASTER_PORT: ours takes the next one.
    if (get("TORCHELASTIC_USE_AGENT_STORE")) e.master_port += 1;
  } else if (!job_id.empty() && (e.source == "openmpi" || e.source == "slurm")) {
    // No port given under mpirun or srun: every rank derives the same one from the job id, so
    // two jobs on one host do not both try 29400 (FNV-1a into 29401..31400).
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char ch : job_id) h = (h ^ ch) * 1099511628211ull;
    e.master_port = 29401 + static_cast<int>(h % 2000);
  }
  MOE_CHECK(e.master_port > 0 && e.master_port < 65536, "comm.env", "store port ", e.master_port,
            " is out of range: set MOE_MASTER_PORT to 1..65535");
  e.store_external = get("MOE_STORE_EXTERNAL") && std::string(get("MOE_STORE_EXTERNAL")) == "1";

  if (get("MOE_JOB_TOKEN")) {
    e.token = get("MOE_JOB_TOKEN");
  } else {
    // Without a launcher nobody hands out a secret; every rank can still agree on the job id.
    e.token = "moe-derived-token:" + e.source + ":" + job_id + ":" + e.master_addr + ":" +
              std::to_string(e.master_port);
    e.token_is_derived = true;
  }
  return e;
}

}  // namespace moe::comm
