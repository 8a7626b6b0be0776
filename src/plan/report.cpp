#include "plan/report.h"

#include <cstdarg>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace moe::plan {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string f(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// Counts and rates for models from 1M to 1T parameters: "685.0B", "3.78M".
std::string count(double x) { return x >= 1e9 ? f("%.1fB", x / 1e9) : f("%.3gM", x / 1e6); }
std::string flops(double x) { return x >= 1e9 ? f("%.1f GFLOP", x / 1e9) : f("%.3g MFLOP", x / 1e6); }
std::string tflops(double x) { return x >= 10e12 ? f("%.0f", x / 1e12) : f("%.3g", x / 1e12); }

}  // namespace

std::string header_text(const PlanModel& m, const Cluster& c, const Job& job) {
  const ParamCounts p = count_params(m);
  std::string s;
  s += f("model   %s: %s parameters (%s in routed experts), %s active per token\n",
         m.name().c_str(), count(p.total).c_str(), count(p.expert).c_str(),
         count(p.active).c_str());
  s += f("cluster %s: %lld devices, %lld per node, %.0f GiB, bf16 %.4g TFLOP/s, fp8 %.4g, "
         "intra %.4g GB/s, inter %.4g GB/s per device\n",
         c.name.c_str(), static_cast<long long>(job.devices),
         static_cast<long long>(c.devices_per_node), c.memory_bytes / kGiB, c.peak_bf16 / 1e12,
         c.peak_fp8 / 1e12, c.intra_bandwidth / 1e9, c.inter_bandwidth / 1e9);
  const double tok = static_cast<double>(job.global_batch * job.seq);
  s += f("job     global batch %lld x seq %lld = %s tokens per step",
         static_cast<long long>(job.global_batch), static_cast<long long>(job.seq),
         tok >= 1e6 ? f("%.2fM", tok / 1e6).c_str() : f("%.0f", tok).c_str());
  if (job.tokens > 0) s += f(", budget %.3gT tokens", job.tokens / 1e12);
  s += f("; model FLOPs %s/token (causal attention)\n",
         flops(train_flops_per_token(m, job.seq, true)).c_str());
  return s;
}

std::string table_text(const std::vector<Candidate>& rows, const Job& job) {
  std::string s = f("%-3s %-58s %7s %7s %7s %7s %7s %6s %9s %9s", "#", "layout", "mem GiB",
                    "step s", "compute", "exp.com", "bubble", "MFU", "tok/s/dev", "net MB");
  if (job.tokens > 0) s += f(" %7s %10s", "days", "dev-hours");
  s += "\n";
  int i = 0;
  for (const auto& r : rows) {
    const Time& t = r.time;
    s += f("%-3d %-58s %7.1f %7.2f %7.2f %7.2f %7.2f %5.1f%% %9.0f %9.4g", ++i,
           r.layout.str().c_str(), r.memory.total / kGiB, t.step, t.compute,
           t.exposed_comm + t.optimizer + t.diloco + t.net_cpu, t.bubble, 100 * t.mfu,
           t.tokens_per_s_per_device, t.inter_bytes / 1e6);
    if (job.tokens > 0) s += f(" %7.1f %10.3g", t.days, t.device_hours);
    s += "\n";
  }
  return s;
}

std::string explain_text(const PlanModel& m, const Cluster& c, const Job& job, const Candidate& x) {
  const Layout& l = x.layout;
  const Memory& mm = x.memory;
  const Time& t = x.time;
  std::string s = f("layout %s  (edp %lld, devices %lld)\n", l.str().c_str(),
                    static_cast<long long>(l.edp()), static_cast<long long>(l.devices()));
  s += "memory per device (fullest stage)\n";
  s += f("  parameters        %s non-expert + %s expert elements\n",
         count(mm.params_nonexpert).c_str(), count(mm.params_expert).c_str());
  s += f("  weights           %8.2f GiB\n", mm.weights / kGiB);
  s += f("  gradients         %8.2f GiB\n", mm.grads / kGiB);
  s += f("  optimizer state   %8.2f GiB\n", mm.optimizer / kGiB);
  s += f("  activations       %8.2f GiB  (%.2f micro-batches in flight, recompute %s)\n",
         mm.activations / kGiB, mm.inflight, recompute_name(l.recompute));
  s += f("  dispatch buffers  %8.2f GiB\n", mm.dispatch_buffers / kGiB);
  s += f("  logits (fp32)     %8.2f GiB\n", mm.logits / kGiB);
  if (mm.comm_state > 0)
    s += f("  comm state        %8.2f GiB  (error-feedback residual, DiLoCo anchor + momentum)\n",
           mm.comm_state / kGiB);
  s += f("  total             %8.2f GiB of %.2f usable (%s)\n", mm.total / kGiB,
         mm.capacity / kGiB, mm.fits() ? "fits" : "DOES NOT FIT");
  s += "one micro-batch on one stage (seconds)\n";
  s += f("  forward  %.4f = dense GEMM %.4f + expert GEMM %.4f + head/router %.4f + attention "
         "%.4f + elementwise %.4f\n",
         t.fwd, t.fwd_dense, t.fwd_expert, t.fwd_head, t.fwd_attn, t.fwd_mem);
  s += f("  backward %.4f = input grads %.4f + weight grads %.4f; recompute %.4f\n", t.bwd,
         t.bwd_input, t.bwd_weight, t.recompute);
  s += f("  tensor-parallel collectives %.4f (exposed)\n", t.tp_comm);
  s += f("  all-to-all %.4f, exposed %.4f, overlap slowdown %.4f (%s; dispatch %s, combine %s)\n",
         t.a2a, t.a2a_exposed, t.overlap_slowdown,
         l.schedule == Schedule::kDualPipe ? "overlapped by DualPipe" : "not overlapped",
         wire_name(l.dispatch), wire_name(l.combine));
  s += f("step (seconds) %.4f = compute %.4f + bubble %.4f + exposed comm %.4f + optimizer %.4f"
         " + DiLoCo %.4f + network CPU %.4f\n",
         t.step, t.compute, t.bubble, t.exposed_comm, t.optimizer, t.diloco, t.net_cpu);
  s += f("  exposed comm = %lld x (tp %.4f + a2a %.4f) + dp %.4f (of %.4f) + pp p2p %.4f\n",
         static_cast<long long>(l.num_micro), t.tp_comm, t.a2a_exposed, t.dp_exposed, t.dp_comm,
         t.pp_exposed);
  {
    const SyncGroups sg = sync_groups(c, l);
    const GroupSpan g = group_span(sg.dp, l.tp, c.devices_per_node);
    const bool enc = l.grad_comm == Wire::kBf16 || l.grad_comm == Wire::kInt8;
    s += f("  dp sync: gradient reduce-scatter %.4f s (%s, %s) + parameter all-gather %.4f s "
           "(ring); dp %lld ranks on %lld node(s), edp %lld; %s\n",
           t.dp_rs, wire_name(l.grad_comm),
           !enc ? "ring"
           : g.nodes > 1 && g.even && g.per_node > 1 ? "two-level: f32 in the node, encoded across"
                                                      : "direct exchange",
           t.dp_ag,
           static_cast<long long>(sg.dp), static_cast<long long>(g.nodes),
           static_cast<long long>(sg.edp),
           l.overlap ? "overlapped with backward / next forward" : "not overlapped");
    if (sg.groups > 1)
      s += f("  DiLoCo: %lld groups of %lld devices; every %lld steps an all-reduce of the "
             "pseudo-gradient (%s) %.4f s + outer Nesterov step %.4f s = %.4f s per step\n",
             static_cast<long long>(sg.groups), static_cast<long long>(sg.devices),
             static_cast<long long>(l.diloco_h), wire_name(l.outer_comm), t.outer_sync,
             t.outer_step, t.diloco);
  }
  s += f("network (inter-node) per device per step: %.4f MB sent = gradients %.4f + parameters "
         "%.4f + all-to-all %.4f + pipeline %.4f + DiLoCo %.4f (%.4f MB per outer sync / H)\n",
         t.inter_bytes / 1e6, t.inter_grad / 1e6, t.inter_param / 1e6, t.inter_a2a / 1e6,
         t.inter_pp / 1e6, t.inter_diloco / 1e6, t.outer_inter_bytes / 1e6);
  s += f("rates: %.0f tokens/s/device, %s TFLOP/s/device (%s by Megatron's full-attention "
         "count), MFU %.1f%%\n",
         t.tokens_per_s_per_device, tflops(t.model_tflops_per_device * 1e12).c_str(),
         tflops(t.megatron_tflops_per_device * 1e12).c_str(), 100 * t.mfu);
  if (job.tokens > 0)
    s += f("budget %.3gT tokens: %.1f days on %lld devices, %.4g device-hours (%.4g per trillion "
           "tokens)\n",
           job.tokens / 1e12, t.days, static_cast<long long>(l.devices()), t.device_hours,
           t.device_hours / (job.tokens / 1e12));
  (void)m;
  return s;
}

std::string candidates_json(const PlanModel& m, const Cluster& c, const Job& job,
                            const std::vector<Candidate>& rows) {
  nlohmann::ordered_json j;
  j["model"] = m.name();
  j["cluster"] = c.name;
  j["devices"] = job.devices;
  j["global_batch"] = job.global_batch;
  j["seq"] = job.seq;
  j["tokens"] = job.tokens;
  j["layouts"] = nlohmann::json::array();
  for (const auto& r : rows) {
    const Layout& l = r.layout;
    const Time& t = r.time;
    nlohmann::ordered_json o;
    o["tp"] = l.tp, o["pp"] = l.pp, o["vpp"] = l.vpp, o["ep"] = l.ep, o["dp"] = l.dp;
    o["edp"] = l.edp(), o["micro_batch"] = l.micro_batch, o["num_micro"] = l.num_micro;
    o["schedule"] = schedule_name(l.schedule), o["recompute"] = recompute_name(l.recompute);
    o["zero"] = l.zero, o["dtype"] = dtype_name(l.dtype), o["node_limited"] = l.node_limited;
    o["grad_comm"] = wire_name(l.grad_comm), o["dispatch"] = wire_name(l.dispatch);
    o["combine"] = wire_name(l.combine), o["overlap"] = l.overlap;
    o["diloco_inner_steps"] = l.diloco_h, o["diloco_group"] = l.diloco_group;
    o["outer_comm"] = wire_name(l.outer_comm);
    o["memory_bytes"] = r.memory.total, o["fits"] = r.memory.fits();
    o["step_s"] = t.step, o["compute_s"] = t.compute, o["bubble_s"] = t.bubble;
    o["exposed_comm_s"] = t.exposed_comm, o["optimizer_s"] = t.optimizer;
    o["a2a_per_microbatch_s"] = t.a2a, o["dp_comm_s"] = t.dp_comm;
    o["dp_reduce_scatter_s"] = t.dp_rs, o["dp_all_gather_s"] = t.dp_ag;
    o["dp_exposed_s"] = t.dp_exposed, o["diloco_s"] = t.diloco, o["network_cpu_s"] = t.net_cpu;
    o["outer_sync_s"] = t.outer_sync, o["outer_step_s"] = t.outer_step;
    o["inter_bytes_per_step"] = t.inter_bytes;
    o["inter_bytes"] = {{"grad", t.inter_grad}, {"param", t.inter_param}, {"a2a", t.inter_a2a},
                        {"pp", t.inter_pp}, {"diloco", t.inter_diloco},
                        {"per_outer_sync", t.outer_inter_bytes}};
    o["tokens_per_s_per_device"] = t.tokens_per_s_per_device;
    o["tflops_per_device"] = t.model_tflops_per_device, o["mfu"] = t.mfu;
    o["device_hours"] = t.device_hours, o["days"] = t.days;
    j["layouts"].push_back(o);
  }
  return j.dump(2) + "\n";
}

}  // namespace moe::plan
