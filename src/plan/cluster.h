// A cluster as the cost model sees it, read from a TOML file (configs/clusters/*.toml).
// Bandwidths are per device and per direction; latencies are one message's fixed cost.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::plan {

enum class Dtype { kFp32, kBf16, kFp8 };
const char* dtype_name(Dtype d);

// Achievable fraction of the peak for each kind of work (0, 1].
struct Efficiency {
  double gemm = 0.6;          // dense GEMMs at the compute dtype's peak, e.g. 0.6
  double grouped_gemm = 0.5;  // routed-expert grouped GEMMs, e.g. 0.5
  double fp8_gemm = 0.42;     // GEMMs in fp8 relative to the fp8 peak, e.g. 0.42
  double fp8_grouped_gemm = 0.35;
  double attention = 0.4;   // attention core (QK^T, softmax, PV) at the bf16 peak, e.g. 0.4
  double memory = 0.8;      // elementwise kernels at the memory bandwidth, e.g. 0.8
  double optimizer = 0;     // AdamW's streams at the memory bandwidth (0: as memory)
  double intra_comm = 0.8;  // collectives inside a node at intra_bandwidth, e.g. 0.8
  double inter_comm = 0.8;  // collectives across nodes at inter_bandwidth, e.g. 0.8
  // Share of compute units that communication kernels take while they overlap compute
  // (DeepSeek-V3 sec. 3.2.2: 20 of 132 SMs on H800 = 0.15); 0 for a DMA engine.
  double overlap_compute_share = 0.0;
  // The grouped GEMMs' efficiency as a function of the rows each expert's GEMM gets (tokens
  // routed to it in one micro-batch): a few rows per expert run further below peak than many.
  // Rows ascending; empty = grouped_gemm at every shape. `moe plan --calibrate` measures it.
  std::vector<double> grouped_gemm_rows;   // e.g. 16, 32, ..., 4096
  std::vector<double> grouped_gemm_curve;  // efficiency at each, in (0, 1]

  // grouped_gemm, or the curve at `rows` per expert (linear in log rows, held at the ends).
  double grouped_at(double rows) const;
};

struct Cluster {
  std::string name;              // e.g. "H800 SXM5, 8 per node, 8x400G InfiniBand"
  std::string path;              // the file it came from
  double peak_fp32 = 0;          // FLOP/s per device (non-tensor fp32 for GPUs)
  double peak_bf16 = 0;          // FLOP/s per device, dense (no sparsity)
  double peak_fp8 = 0;           // 0 = not supported
  double peak_int8 = 0;          // OP/s, 0 = not supported
  double memory_bytes = 0;       // HBM per device, e.g. 80 GiB
  double memory_bandwidth = 0;   // bytes/s per device, e.g. 3.35e12
  int64_t devices_per_node = 1;  // e.g. 8
  double intra_bandwidth = 0;    // bytes/s per device per direction inside a node
  double intra_latency = 0;      // seconds
  double inter_bandwidth = 0;    // bytes/s per device per direction across nodes (its NIC share)
  double inter_latency = 0;      // seconds
  // Seconds of a device's own compute time per byte it sends or receives across nodes: CPU
  // devices run the kernel's TCP stack on the cores that compute (e.g. 2.2e-9 for a rank on
  // half a core of an emulated host); 0 for NICs that move data by DMA/RDMA.
  double inter_cpu_per_byte = 0;
  Efficiency eff;

  double peak(Dtype d) const;  // FLOP/s for GEMMs in dtype d
};

// Reads a cluster TOML file; errors name the file, line, key and the allowed values.
Cluster load_cluster(const std::string& path);
Cluster parse_cluster(const std::string& toml_text, const std::string& origin);
// The TOML text of a cluster (used by --calibrate to write this machine's file).
std::string cluster_to_toml(const Cluster& c, const std::string& comment);

}  // namespace moe::plan
