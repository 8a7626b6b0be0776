// The cost model: memory per device and time per step of one parallel layout, written as
// plain functions with every term visible (tests check each against hand-computed values).
//
// Layout conventions (Megatron-Core with MoE parallel folding, arXiv 2504.14960):
//   devices = tp * pp * dp. Attention, dense FFN and shared experts are tensor-parallel (tp,
//   with sequence parallelism) and data-parallel (dp). Routed experts are not tensor-parallel;
//   the tp*dp devices of a stage are regrouped into ep expert-parallel ranks times
//   edp = tp*dp/ep expert-data-parallel ranks. Ranks are ordered tp (innermost), dp, pp; the
//   ep group is innermost within a stage, so it stays inside a node when ep <= devices/node.
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

  int64_t devices() const { return tp * pp * dp; }
  int64_t edp() const { return tp * dp / ep; }
  std::string str() const;   // "tp1 pp16 ep64 dp128 mb1x120 dualpipe sel zero1 fp8 nodelim"
};

// Parses "tp=1,pp=16,ep=64,mb=1,sched=dualpipe,recompute=selective,zero=1,dtype=fp8,
// nodelimit=1,vpp=1"; dp and num_micro follow from the job. Errors name the bad item.
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

// ---- Collective and pipeline formulas ----------------------------------------------------
// Ring all-gather or reduce-scatter of a `bytes` buffer over n ranks: each rank moves
// (n-1)/n of it, in n-1 latency-bound steps (Thakur, Rabenseifner & Gropp 2005; the busbw
// factor of nccl-tests). All-reduce = reduce-scatter + all-gather = 2x.
double ring_time(double bytes, int64_t n, double bandwidth, double latency);
// Distinct nodes covered by a group of `size` ranks spaced `stride` apart, ranks filling
// nodes of `per_node` devices in order.
int64_t nodes_spanned(int64_t size, int64_t stride, int64_t per_node);
// Expected distinct nodes hit by k uniform picks among g nodes: g * (1 - (1 - 1/g)^k).
double expected_nodes_touched(int64_t k, int64_t g);
// Pipeline bubble per step given per-micro-batch stage times F (forward), B (backward for
// inputs) and W (backward for weights):
//   1F1B        (p-1)(F+B+W)                    Narayanan et al. 2021, arXiv 2104.04473
//   interleaved (p-1)(F+B+W)/v                  same, sec. 2.2.2
//   DualPipe    (p/2-1)(F&B + B - 3W), F&B = F+B  DeepSeek-V3, arXiv 2412.19437, Table 2
double bubble_time(Schedule s, int64_t pp, int64_t vpp, double F, double B, double W);
// Micro-batches whose activations the first stage holds at its peak:
//   1F1B p; interleaved p + (p-1)/v (Korthikanti et al. 2022, arXiv 2205.05198, sec. 4.2.3);
//   DualPipe p + 1 (DeepSeek-V3 Table 2). Never more than the micro-batches in a step.
double inflight_microbatches(Schedule s, int64_t pp, int64_t vpp, int64_t num_micro);

// ---- Memory model ------------------------------------------------------------------------
// Bytes of activations one token leaves for backward in one layer, before dividing by tp
// (sequence parallelism shards all of them, Korthikanti et al. 2022). `a` = bytes per element.
double act_bytes_per_token_layer(const PlanModel& m, bool moe_layer, Recompute r, double a);
// Bytes per parameter for weights, gradients and AdamW state, by ZeRO stage over d ranks
// (Megatron-LM distributed optimizer docs: mixed precision 18 bytes/param replicated,
// 6 + 12/d with the optimizer sharded; ZeRO, Rajbhandari et al. 2020, arXiv 1910.02054).
struct StateBytes {
  double weights = 0, grads = 0, optimizer = 0;
  double total() const { return weights + grads + optimizer; }
};
StateBytes state_bytes_per_param(Dtype d, int zero, int64_t shards);

struct Memory {
  double params_nonexpert = 0;  // elements on the worst device (its stage's share)
  double params_expert = 0;
  double weights = 0, grads = 0, optimizer = 0;  // bytes
  double activations = 0;       // bytes, all in-flight micro-batches
  double inflight = 0;          // micro-batches held (see inflight_microbatches)
  double dispatch_buffers = 0;  // bytes, all-to-all send + receive of one MoE layer
  double logits = 0;            // bytes, fp32 logits of one micro-batch on the last stage
  double total = 0;
  double capacity = 0;          // usable bytes per device (kMemoryHeadroom of HBM)
  bool fits() const { return total <= capacity; }
};
// Usable fraction of device memory: the rest goes to the allocator's fragmentation, the
// framework and communication libraries (an assumption, typical of PyTorch jobs).
constexpr double kMemoryHeadroom = 0.9;
Memory memory_per_device(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l);

// ---- Time model --------------------------------------------------------------------------
struct A2aBytes {
  double intra = 0, inter = 0;  // bytes one device sends per all-to-all
};
// One all-to-all of `tokens` tokens per device, `elem_bytes` per hidden element.
A2aBytes a2a_bytes(const PlanModel& m, const Cluster& c, const Layout& l, double tokens,
                   double elem_bytes);
double a2a_time(const Cluster& c, const A2aBytes& b, bool crosses_nodes);

// Forward bytes read + written by elementwise kernels (norms, residuals, RoPE, SwiGLU,
// permute/unpermute) per token per layer, `a` bytes per element.
double elementwise_bytes_per_token_layer(const PlanModel& m, bool moe_layer, double a);

struct Time {
  // One micro-batch on one stage (seconds).
  double fwd_dense = 0, fwd_expert = 0, fwd_head = 0, fwd_attn = 0, fwd_mem = 0;
  double fwd = 0, bwd = 0, bwd_input = 0, bwd_weight = 0, recompute = 0;
  double tp_comm = 0;           // exposed: not overlapped
  double a2a = 0;               // total all-to-all time
  double a2a_exposed = 0;       // after overlap with compute (DualPipe only)
  double overlap_slowdown = 0;  // compute lost to communication kernels while overlapping
  // One step (seconds).
  double compute = 0;           // num_micro * (fwd + bwd + recompute + overlap_slowdown)
  double bubble = 0;
  double exposed_comm = 0;      // num_micro * (tp_comm + a2a_exposed) + dp + pp
  double dp_comm = 0, dp_exposed = 0, pp_exposed = 0;
  double optimizer = 0;
  double step = 0;
  // Rates.
  double tokens_per_s_per_device = 0;
  double model_tflops_per_device = 0;     // causal attention counted as half
  double megatron_tflops_per_device = 0;  // full attention (Megatron-LM's reported convention)
  double mfu = 0;                         // model FLOPs / bf16 peak (fp32 peak for fp32 runs)
  double device_hours = 0;                // for job.tokens (0 if not given)
  double days = 0;
};
Time step_time(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l);

}  // namespace moe::plan
