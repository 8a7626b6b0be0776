// A parallel layout and the job it runs, as the cost model sees them (cost.h uses both).
//
// Layout conventions (Megatron-Core with MoE parallel folding, arXiv 2504.14960):
//   devices = tp * pp * dp. Attention, dense FFN and shared experts are tensor-parallel (tp,
//   with sequence parallelism) and data-parallel (dp). Routed experts are not tensor-parallel;
//   the tp*dp devices of a stage are regrouped into ep expert-parallel ranks times
//   edp = tp*dp/ep expert-data-parallel ranks. Ranks are ordered tp (innermost), dp, pp; the
//   ep group is innermost within a stage, so it stays inside a node when ep <= devices/node.
//   moe.cpp's own trainer is the tp = pp = 1 case: world = dp, ep consecutive ranks.
#pragma once

#include <cstdint>
#include <string>

#include "plan/cluster.h"
#include "plan/model_spec.h"

namespace moe::plan {

enum class Recompute { kNone, kSelective, kFull };
enum class Schedule { k1F1B, kInterleaved, kDualPipe };
const char* recompute_name(Recompute r);
const char* schedule_name(Schedule s);

// A value format on the wire (issue 16, [parallel] *_dtype of the trainer). kAuto keeps the
// layout's own choice: activations and gradients in the compute dtype's activation format
// (bf16; fp32 for fp32 runs), dispatches in fp8 for fp8 runs.
enum class Wire { kAuto, kFp32, kBf16, kFp8, kInt8 };
const char* wire_name(Wire w);
// Bytes per value on the wire: fp32 4, bf16 2; fp8 (E4M3) and int8 carry one fp32 scale per
// 128 values, so 1 + 4/128 = 1.03125 (DeepSeek-V3 sec. 3.3's 1x128 tiles).
double wire_bytes(Wire w);

struct Layout {
  int64_t tp = 1;            // tensor parallel, e.g. 2
  int64_t pp = 1;            // pipeline stages, e.g. 16
  int64_t vpp = 1;           // virtual stages per device (interleaved schedule), e.g. 2
  int64_t ep = 1;            // expert parallel, divides tp*dp and n_routed_experts, e.g. 64
  int64_t dp = 1;            // data parallel = devices / (tp*pp), e.g. 128
  int64_t micro_batch = 1;   // sequences per micro-batch, e.g. 1
  int64_t num_micro = 1;     // micro-batches per step = global_batch / (dp*micro_batch)
  Recompute recompute = Recompute::kNone;
  int zero = 1;              // 0 replicated optimizer, 1 shard optimizer states, 2 + gradients
  Dtype dtype = Dtype::kBf16;
  Schedule schedule = Schedule::k1F1B;
  bool node_limited = false; // each token's experts on at most topk_group groups (= nodes)
  // Node-limited tokens cross the network once per node and are forwarded inside it
  // (DeepSeek-V3 sec. 3.2.2); false: each of the K rows travels on its own, as moe.cpp's
  // ExpertDispatcher sends them, so the limit saves no bytes in expectation.
  bool dedup = true;
  // Slow-link options (issue 16; the trainer's [parallel] keys of the same names).
  Wire grad_comm = Wire::kAuto;  // gradient reduce-scatter: fp32 ring, bf16/int8 direct exchange
  Wire dispatch = Wire::kAuto;   // forward dispatch and backward gradient dispatch: fp32 bf16 fp8
  Wire combine = Wire::kAuto;    // combine and backward return trip: fp32 bf16
  bool overlap = true;           // gradient sync hidden under backward, all-gather under forward
  int64_t diloco_h = 0;          // DiLoCo: inner steps H between outer syncs, e.g. 50 (0 = off)
  int64_t diloco_group = 0;      // DiLoCo: devices per group, e.g. 8 (0 = one node)
  Wire outer_comm = Wire::kFp32; // DiLoCo pseudo-gradient all-reduce: fp32 or int8

  int64_t devices() const { return tp * pp * dp; }
  int64_t edp() const { return tp * dp / ep; }
  std::string str() const;   // "tp1 pp16 ep64 dp128 mb1x120 dualpipe sel zero1 fp8 nodelim"
};

// Parses "tp=1,pp=16,ep=64,mb=1,sched=dualpipe,recompute=selective,zero=1,dtype=fp8,
// nodelimit=1,dedup=1,vpp=1,gradcomm=int8,dispatch=fp8,combine=bf16,overlap=1,diloco=50,
// dilocogroup=8,outercomm=int8"; dp and num_micro follow from the job. Later items override
// earlier ones. Errors name the bad item and the allowed values.
Layout parse_layout(const std::string& spec);

struct Job {
  int64_t devices = 1;       // e.g. 2048
  int64_t global_batch = 1;  // sequences per optimizer step, e.g. 15360
  int64_t seq = 4096;        // tokens per sequence
  double tokens = 0;         // training budget in tokens (0 = not given), e.g. 14.8e12
};

// Fills dp and num_micro from the job; returns false (with why) if the layout cannot run it.
bool complete_layout(const PlanModel& m, const Cluster& c, const Job& job, Layout& l,
                     std::string* why);

// The groups that synchronize gradients every step: the whole job, or one DiLoCo group.
struct SyncGroups {
  int64_t devices = 1;  // devices that sync every step (a DiLoCo group, else the job)
  int64_t dp = 1;       // data-parallel ranks among them (non-expert gradients), stride tp
  int64_t edp = 1;      // expert-data-parallel ranks among them (expert gradients), stride ep
  int64_t groups = 1;   // DiLoCo groups (1 = plain synchronous training)
};
SyncGroups sync_groups(const Cluster& c, const Layout& l);

}  // namespace moe::plan
