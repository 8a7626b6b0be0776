#include "plan/layout.h"

#include <sstream>

#include "core/error.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";

}  // namespace

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone: return "none";
    case Recompute::kSelective: return "sel";
    case Recompute::kFull: return "full";
  }
  return "?";
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::k1F1B: return "1f1b";
    case Schedule::kInterleaved: return "interleaved";
    case Schedule::kDualPipe: return "dualpipe";
  }
  return "?";
}

const char* wire_name(Wire w) {
  switch (w) {
    case Wire::kAuto: return "auto";
    case Wire::kFp32: return "fp32";
    case Wire::kBf16: return "bf16";
    case Wire::kFp8: return "fp8";
    case Wire::kInt8: return "int8";
  }
  return "?";
}

double wire_bytes(Wire w) {
  switch (w) {
    case Wire::kFp32: return 4.0;
    case Wire::kBf16: return 2.0;
    case Wire::kFp8:
    case Wire::kInt8: return 1.0 + 4.0 / 128.0;  // one byte + an fp32 scale per 128 values
    case Wire::kAuto: break;
  }
  MOE_FAIL(kOp, "wire_bytes: the auto format has no size of its own; resolve it first");
}

std::string Layout::str() const {
  std::ostringstream os;
  os << "tp" << tp << " pp" << pp;
  if (schedule == Schedule::kInterleaved) os << "x" << vpp;
  os << " ep" << ep << " dp" << dp << " mb" << micro_batch << "x" << num_micro << " "
     << schedule_name(schedule) << " " << recompute_name(recompute) << " zero" << zero << " "
     << dtype_name(dtype);
  if (node_limited) os << (dedup ? " nodelim" : " nodelim:copies");
  if (grad_comm != Wire::kAuto) os << " grad:" << wire_name(grad_comm);
  if (dispatch != Wire::kAuto) os << " disp:" << wire_name(dispatch);
  if (combine != Wire::kAuto) os << " comb:" << wire_name(combine);
  if (!overlap) os << " no-overlap";
  if (diloco_h > 0) {
    os << " diloco" << diloco_h << "/g";
    if (diloco_group > 0) os << diloco_group;
    else os << "node";
    if (outer_comm != Wire::kFp32) os << ":" << wire_name(outer_comm);
  }
  return os.str();
}

Layout parse_layout(const std::string& spec) {
  Layout l;
  std::stringstream ss(spec);
  std::string item;
  const char* help = "; use e.g. tp=1,pp=16,ep=64,mb=1,sched=dualpipe,recompute=selective,"
                     "zero=1,dtype=fp8,nodelimit=1,gradcomm=int8,dispatch=fp8,combine=bf16,"
                     "diloco=50,dilocogroup=8";
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    MOE_CHECK(eq != std::string::npos, kOp, "--layout item '", item, "' has no '='", help);
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    auto num = [&]() {
      try {
        size_t pos = 0;
        const long long x = std::stoll(v, &pos);
        if (pos == v.size() && x >= 0) return static_cast<int64_t>(x);
      } catch (const std::exception&) {
      }
      MOE_FAIL(kOp, "--layout ", k, "=", v, ": expected a non-negative integer", help);
    };
    // One wire format among `allowed` (names as wire_name prints them).
    auto wire = [&](std::initializer_list<Wire> allowed) {
      std::string list;
      for (Wire w : allowed) {
        if (v == wire_name(w)) return w;
        list += (list.empty() ? "" : ", ") + std::string(wire_name(w));
      }
      MOE_FAIL(kOp, "--layout ", k, "=", v, ": allowed ", list);
    };
    if (k == "tp") l.tp = num();
    else if (k == "pp") l.pp = num();
    else if (k == "vpp") l.vpp = num();
    else if (k == "ep") l.ep = num();
    else if (k == "mb") l.micro_batch = num();
    else if (k == "zero") l.zero = static_cast<int>(num());
    else if (k == "nodelimit") l.node_limited = num() != 0;
    else if (k == "overlap") l.overlap = num() != 0;
    else if (k == "dedup") l.dedup = num() != 0;
    else if (k == "diloco") l.diloco_h = num();
    else if (k == "dilocogroup") l.diloco_group = num();
    else if (k == "gradcomm") l.grad_comm = wire({Wire::kFp32, Wire::kBf16, Wire::kInt8});
    else if (k == "dispatch") l.dispatch = wire({Wire::kFp32, Wire::kBf16, Wire::kFp8});
    else if (k == "combine") l.combine = wire({Wire::kFp32, Wire::kBf16});
    else if (k == "outercomm") l.outer_comm = wire({Wire::kFp32, Wire::kInt8});
    else if (k == "sched") {
      if (v == "1f1b") l.schedule = Schedule::k1F1B;
      else if (v == "interleaved") l.schedule = Schedule::kInterleaved;
      else if (v == "dualpipe") l.schedule = Schedule::kDualPipe;
      else MOE_FAIL(kOp, "--layout sched=", v, ": allowed 1f1b, interleaved, dualpipe");
    } else if (k == "recompute") {
      if (v == "none") l.recompute = Recompute::kNone;
      else if (v == "selective" || v == "sel") l.recompute = Recompute::kSelective;
      else if (v == "full") l.recompute = Recompute::kFull;
      else MOE_FAIL(kOp, "--layout recompute=", v, ": allowed none, selective, full");
    } else if (k == "dtype") {
      if (v == "bf16") l.dtype = Dtype::kBf16;
      else if (v == "fp8") l.dtype = Dtype::kFp8;
      else if (v == "fp32") l.dtype = Dtype::kFp32;
      else MOE_FAIL(kOp, "--layout dtype=", v, ": allowed bf16, fp8, fp32");
    } else {
      MOE_FAIL(kOp, "--layout: unknown item '", k, "'; allowed tp, pp, vpp, ep, mb, sched, "
               "recompute, zero, dtype, nodelimit, dedup, gradcomm, dispatch, combine, overlap, "
               "diloco, dilocogroup, outercomm");
    }
  }
  if (l.schedule != Schedule::kInterleaved) l.vpp = 1;
  return l;
}

SyncGroups sync_groups(const Cluster& c, const Layout& l) {
  SyncGroups g;
  g.devices = l.devices();
  g.dp = l.dp;
  g.edp = l.edp();
  if (l.diloco_h <= 0) return g;
  g.devices = l.diloco_group > 0 ? l.diloco_group : c.devices_per_node;
  g.groups = l.devices() / g.devices;
  g.dp = g.devices / (l.tp * l.pp);  // a group is whole (tp, pp) model replicas
  g.edp = l.tp * g.dp / l.ep;
  return g;
}

bool complete_layout(const PlanModel& m, const Cluster& c, const Job& job, Layout& l,
                     std::string* why) {
  auto fail = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (l.tp < 1 || l.pp < 1 || l.ep < 1 || l.micro_batch < 1 || l.vpp < 1)
    return fail("sizes must be >= 1");
  if (job.devices % (l.tp * l.pp) != 0) return fail("tp*pp does not divide the device count");
  l.dp = job.devices / (l.tp * l.pp);
  if ((l.tp * l.dp) % l.ep != 0) return fail("ep does not divide tp*dp");
  if (m.cfg.n_routed_experts % l.ep != 0) return fail("ep does not divide n_routed_experts");
  if (l.tp > c.devices_per_node) return fail("tp larger than a node");
  if (m.cfg.num_attention_heads % l.tp != 0) return fail("tp does not divide the heads");
  if (l.pp * l.vpp > num_compute_layers(m)) return fail("more pipeline stages than layers");
  if (job.global_batch % (l.dp * l.micro_batch) != 0)
    return fail("dp*micro_batch does not divide the global batch");
  l.num_micro = job.global_batch / (l.dp * l.micro_batch);
  if (l.schedule == Schedule::kDualPipe && (l.pp % 2 != 0 || l.pp < 2))
    return fail("DualPipe needs an even pp >= 2");
  // DualPipe feeds micro-batches from both ends; each direction needs pp of them to fill.
  if (l.schedule == Schedule::kDualPipe && l.num_micro < 2 * l.pp)
    return fail("DualPipe needs at least 2*pp micro-batches");
  if (l.schedule == Schedule::kInterleaved && (l.pp < 2 || l.vpp < 2))
    return fail("interleaved needs pp >= 2 and vpp >= 2");
  if (l.schedule == Schedule::kInterleaved && l.num_micro % l.pp != 0)
    return fail("interleaved needs num_micro divisible by pp");
  if (l.dtype == Dtype::kFp8 && c.peak_fp8 <= 0) return fail("the device has no fp8");
  if (l.zero < 0 || l.zero > 2) return fail("zero must be 0, 1 or 2");
  if (l.node_limited && m.cfg.n_group <= 1) return fail("node-limited routing needs n_group > 1");
  if (l.diloco_h > 0) {
    // Every DiLoCo group is a whole replica of the model: its own tp x pp x dp grid, with
    // the expert-parallel groups inside it (the trainer's diloco_group, default one host).
    const int64_t g = l.diloco_group > 0 ? l.diloco_group : c.devices_per_node;
    if (job.devices % g != 0) return fail("dilocogroup does not divide the device count");
    if (job.devices / g < 2) return fail("DiLoCo needs at least 2 groups (devices / dilocogroup)");
    if (g % (l.tp * l.pp) != 0) return fail("tp*pp does not divide dilocogroup");
    if ((g / l.pp) % l.ep != 0) return fail("ep does not fit inside a DiLoCo group");
  }
  return true;
}

}  // namespace moe::plan
