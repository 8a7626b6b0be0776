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

}  // namespace

std::string header_text(const PlanModel& m, const Cluster& c, const Job& job) {
  const ParamCounts p = count_params(m);
  std::string s;
  s += f("model   %s: %.1fB parameters (%.1fB in routed experts), %.1fB active per token\n",
         m.name().c_str(), p.total / 1e9, p.expert / 1e9, p.active / 1e9);
  s += f("cluster %s: %lld devices, %lld per node, %.0f GiB, bf16 %.0f TFLOP/s, fp8 %.0f, "
         "intra %.0f GB/s, inter %.1f GB/s per device\n",
         c.name.c_str(), static_cast<long long>(job.devices),
         static_cast<long long>(c.devices_per_node), c.memory_bytes / kGiB, c.peak_bf16 / 1e12,
         c.peak_fp8 / 1e12, c.intra_bandwidth / 1e9, c.inter_bandwidth / 1e9);
  s += f("job     global batch %lld x seq %lld = %.2fM tokens per step",
         static_cast<long long>(job.global_batch), static_cast<long long>(job.seq),
         job.global_batch * job.seq / 1e6);
  if (job.tokens > 0) s += f(", budget %.3gT tokens", job.tokens / 1e12);
  s += f("; model FLOPs %.1f GFLOP/token (causal attention)\n",
         train_flops_per_token(m, job.seq, true) / 1e9);
  return s;
}

std::string table_text(const std::vector<Candidate>& rows, const Job& job) {
  std::string s = f("%-3s %-58s %7s %7s %7s %7s %7s %6s %9s", "#", "layout", "mem GiB",
                    "step s", "compute", "exp.com", "bubble", "MFU", "tok/s/dev");
  if (job.tokens > 0) s += f(" %7s %10s", "days", "dev-hours");
  s += "\n";
  int i = 0;
  for (const auto& r : rows) {
    const Time& t = r.time;
    s += f("%-3d %-58s %7.1f %7.2f %7.2f %7.2f %7.2f %5.1f%% %9.0f", ++i, r.layout.str().c_str(),
           r.memory.total / kGiB, t.step, t.compute, t.exposed_comm + t.optimizer, t.bubble,
           100 * t.mfu, t.tokens_per_s_per_device);
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
  s += f("  parameters        %.3gB non-expert + %.3gB expert elements\n",
         mm.params_nonexpert / 1e9, mm.params_expert / 1e9);
  s += f("  weights           %8.2f GiB\n", mm.weights / kGiB);
  s += f("  gradients         %8.2f GiB\n", mm.grads / kGiB);
  s += f("  optimizer state   %8.2f GiB\n", mm.optimizer / kGiB);
  s += f("  activations       %8.2f GiB  (%.2f micro-batches in flight, recompute %s)\n",
         mm.activations / kGiB, mm.inflight, recompute_name(l.recompute));
  s += f("  dispatch buffers  %8.2f GiB\n", mm.dispatch_buffers / kGiB);
  s += f("  logits (fp32)     %8.2f GiB\n", mm.logits / kGiB);
  s += f("  total             %8.2f GiB of %.2f usable (%s)\n", mm.total / kGiB,
         mm.capacity / kGiB, mm.fits() ? "fits" : "DOES NOT FIT");
  s += "one micro-batch on one stage (seconds)\n";
  s += f("  forward  %.4f = dense GEMM %.4f + expert GEMM %.4f + head/router %.4f + attention "
         "%.4f + elementwise %.4f\n",
         t.fwd, t.fwd_dense, t.fwd_expert, t.fwd_head, t.fwd_attn, t.fwd_mem);
  s += f("  backward %.4f = input grads %.4f + weight grads %.4f; recompute %.4f\n", t.bwd,
         t.bwd_input, t.bwd_weight, t.recompute);
  s += f("  tensor-parallel collectives %.4f (exposed)\n", t.tp_comm);
  s += f("  all-to-all %.4f, exposed %.4f, overlap slowdown %.4f (%s)\n", t.a2a, t.a2a_exposed,
         t.overlap_slowdown, l.schedule == Schedule::kDualPipe ? "overlapped by DualPipe"
                                                                : "not overlapped");
  s += f("step (seconds) %.3f = compute %.3f + bubble %.3f + exposed comm %.3f + optimizer %.3f\n",
         t.step, t.compute, t.bubble, t.exposed_comm, t.optimizer);
  s += f("  exposed comm = %lld x (tp %.4f + a2a %.4f) + dp %.3f (of %.3f) + pp p2p %.4f\n",
         static_cast<long long>(l.num_micro), t.tp_comm, t.a2a_exposed, t.dp_exposed, t.dp_comm,
         t.pp_exposed);
  s += f("rates: %.0f tokens/s/device, %.0f TFLOP/s/device (%.0f by Megatron's full-attention "
         "count), MFU %.1f%%\n",
         t.tokens_per_s_per_device, t.model_tflops_per_device, t.megatron_tflops_per_device,
         100 * t.mfu);
  if (job.tokens > 0)
    s += f("budget %.3gT tokens: %.1f days on %lld devices, %.4g device-hours (%.4g per trillion "
           "tokens)\n",
           job.tokens / 1e12, t.days, static_cast<long long>(l.devices()), t.device_hours,
           t.device_hours / (job.tokens / 1e12));
  (void)m;
  (void)c;
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
    o["memory_bytes"] = r.memory.total, o["fits"] = r.memory.fits();
    o["step_s"] = t.step, o["compute_s"] = t.compute, o["bubble_s"] = t.bubble;
    o["exposed_comm_s"] = t.exposed_comm, o["optimizer_s"] = t.optimizer;
    o["a2a_per_microbatch_s"] = t.a2a, o["dp_comm_s"] = t.dp_comm;
    o["tokens_per_s_per_device"] = t.tokens_per_s_per_device;
    o["tflops_per_device"] = t.model_tflops_per_device, o["mfu"] = t.mfu;
    o["device_hours"] = t.device_hours, o["days"] = t.days;
    j["layouts"].push_back(o);
  }
  return j.dump(2) + "\n";
}

}  // namespace moe::plan
