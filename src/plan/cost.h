// The cost model: memory per device and time per step of one parallel layout, written as
// plain functions with every term visible (tests check each against hand-computed values).
//
// Memory is counted on the fullest pipeline stage; time is one optimizer step of the slowest
// stage. Layouts, jobs and wire formats are in layout.h, collective formulas in network.h.
#pragma once

#include <cstdint>
#include <string>

#include "plan/layout.h"
#include "plan/network.h"

namespace moe::plan {

// ---- Pipeline formulas ----------------------------------------------------------------
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
  // Slow-link state (bytes): the fp32 error-feedback residual of compressed gradients (one per
  // gradient element held; the trainer's error_feedback, on by default) and DiLoCo's fp32
  // anchor parameters and outer momentum (8 bytes per parameter the optimizer owns).
  double comm_state = 0;
  double total = 0;
  double capacity = 0;          // usable bytes per device (kMemoryHeadroom of HBM)
  bool fits() const { return total <= capacity; }
};
// Usable fraction of device memory: the rest goes to the allocator's fragmentation, the
// framework and communication libraries (an assumption, typical of PyTorch jobs).
constexpr double kMemoryHeadroom = 0.9;
Memory memory_per_device(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l);

// ---- Time model --------------------------------------------------------------------------
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
  double dp_rs = 0, dp_ag = 0;  // gradient reduce-scatter and parameter all-gather (dp_comm)
  double optimizer = 0;
  // DiLoCo: one outer sync (all-reduce of the pseudo-gradient across groups, seconds), the
  // outer Nesterov step, and their share of one step: (outer_sync + outer_step) / H.
  double outer_sync = 0, outer_step = 0, diloco = 0;
  // Network CPU work on the compute cores (cluster inter_cpu_per_byte): the hidden part of
  // the overlapped traffic slows the compute it hides under.
  double net_cpu = 0;
  double step = 0;              // compute + bubble + exposed_comm + optimizer + diloco + net_cpu
  // Bytes one device sends off its node per step (its NIC share; the average over the
  // group's members): gradients, parameters, all-to-all, pipeline, DiLoCo (amortized / H).
  double inter_grad = 0, inter_param = 0, inter_a2a = 0, inter_pp = 0, inter_diloco = 0;
  double inter_bytes = 0;       // the sum
  double outer_inter_bytes = 0; // DiLoCo: bytes one device sends off-node in one outer sync
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
