#include "plan/search.h"

#include <algorithm>
#include <cstdio>

namespace moe::plan {

namespace {

std::vector<int64_t> divisors(int64_t n, int64_t max) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n && i <= max; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

std::string fmt(const char* f, double a, double b) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

}  // namespace

Candidate evaluate(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l) {
  return {l, memory_per_device(m, c, job, l), step_time(m, c, job, l)};
}

SearchResult search(const PlanModel& m, const Cluster& c, const Job& job, const SearchOptions& o) {
  SearchResult r;
  std::vector<Candidate> all;
  const int64_t layers = num_compute_layers(m);
  std::vector<int64_t> tps;
  for (int64_t tp = 1; tp <= c.devices_per_node; tp *= 2) tps.push_back(tp);
  const std::vector<int64_t> pps = divisors(job.devices, layers);
  const std::vector<int64_t> eps = divisors(m.cfg.n_routed_experts, job.devices);
  const bool can_limit = m.cfg.n_group > 1;
  for (int64_t tp : tps)
    for (int64_t pp : pps)
      for (int64_t ep : eps)
        for (int64_t mb : o.micro_batches)
          for (int sched = 0; sched < 4; ++sched)
            for (int rc = 0; rc < 3; ++rc)
              for (int zero = 0; zero <= 2; ++zero)
                for (Dtype dt : o.dtypes)
                  for (int nl = 0; nl <= (can_limit ? 1 : 0); ++nl) {
                    Layout l;
                    l.tp = tp, l.pp = pp, l.ep = ep, l.micro_batch = mb;
                    l.schedule = sched == 0   ? Schedule::k1F1B
                                 : sched == 3 ? Schedule::kDualPipe
                                              : Schedule::kInterleaved;
                    l.vpp = sched == 1 ? 2 : sched == 2 ? 4 : 1;
                    if (pp == 1 && sched != 0) continue;
                    l.recompute = static_cast<Recompute>(rc);
                    l.zero = zero;
                    l.dtype = dt;
                    l.node_limited = nl == 1;
                    if (l.node_limited && nodes_spanned(ep, 1, c.devices_per_node) == 1)
                      continue;  // nothing to limit inside one node
                    if (!complete_layout(m, c, job, l, nullptr)) continue;
                    ++r.considered;
                    Candidate cand = evaluate(m, c, job, l);
                    if (!cand.memory.fits()) continue;
                    ++r.fit;
                    all.push_back(cand);
                  }
  std::sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    if (a.time.step != b.time.step) return a.time.step < b.time.step;
    return a.memory.total < b.memory.total;
  });
  // Rows that differ only in the ZeRO stage or node-limited routing usually tie; show the
  // best of each (the sort put it first).
  std::vector<std::string> seen;
  for (const auto& cand : all) {
    if (r.top.size() >= o.keep) break;
    Layout k = cand.layout;
    k.zero = 0, k.node_limited = false;
    const std::string key = k.str();
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    r.top.push_back(cand);
  }
  return r;
}

Cluster scale_inter_bandwidth(const Cluster& c, double scale) {
  Cluster s = c;
  s.inter_bandwidth *= scale;
  char buf[64];
  std::snprintf(buf, sizeof buf, " [inter-node bandwidth x%g]", scale);
  s.name += buf;
  return s;
}

std::vector<std::string> explain_change(const PlanModel& m, const Cluster& before,
                                        const Cluster& after, const Job& job,
                                        const Candidate& b, const Candidate& a) {
  std::vector<std::string> out;
  const Layout& lb = b.layout;
  const Layout& la = a.layout;
  const int64_t dpn = after.devices_per_node;
  out.push_back(fmt("inter-node bandwidth %.1f -> %.1f GB/s per device", before.inter_bandwidth / 1e9,
                    after.inter_bandwidth / 1e9));
  if (lb.str() == la.str()) {
    out.push_back("the best layout is unchanged: its exposed communication stays small enough");
    return out;
  }
  // What the old layout costs on the new cluster, term by term.
  const Candidate old_on_new = evaluate(m, after, job, lb);
  out.push_back(fmt("the old layout on the slow cluster: step %.2f s -> %.2f s", b.time.step,
                    old_on_new.time.step));
  out.push_back(fmt("  its all-to-all per micro-batch %.3f s -> %.3f s", b.time.a2a,
                    old_on_new.time.a2a) +
                fmt(" (exposed %.3f -> %.3f s)", b.time.a2a_exposed, old_on_new.time.a2a_exposed));
  out.push_back(fmt("  its data-parallel sync %.3f s -> %.3f s", b.time.dp_comm, old_on_new.time.dp_comm) +
                fmt(" (exposed %.3f -> %.3f s)", b.time.dp_exposed, old_on_new.time.dp_exposed));
  out.push_back(fmt("the new layout: step %.2f s (all-to-all %.3f s per micro-batch", a.time.step,
                    a.time.a2a) + fmt(", data-parallel exposed %.3f s; bubble %.2f s)",
                                      a.time.dp_exposed, a.time.bubble));
  const int64_t gb = nodes_spanned(lb.ep, 1, dpn), ga = nodes_spanned(la.ep, 1, dpn);
  if (ga < gb)
    out.push_back(fmt("ep %.0f -> %.0f: ", static_cast<double>(lb.ep), static_cast<double>(la.ep)) +
                  fmt("expert-parallel groups span %.0f -> %.0f node(s), so ",
                      static_cast<double>(gb), static_cast<double>(ga)) +
                  (ga == 1 ? std::string("the token all-to-all stays on the intra-node links")
                           : std::string("a smaller share of each token's expert copies crosses "
                                         "the slow network")));
  else if (la.ep != lb.ep)
    out.push_back(fmt("ep %.0f -> %.0f", static_cast<double>(lb.ep), static_cast<double>(la.ep)));
  if (la.node_limited != lb.node_limited)
    out.push_back(std::string("node-limited routing ") + (la.node_limited ? "on" : "off") +
                  ": each token is sent over the network to at most topk_group nodes");
  if (la.dp != lb.dp)
    out.push_back(fmt("data parallel %.0f -> %.0f", static_cast<double>(lb.dp), static_cast<double>(la.dp)) +
                  fmt(" (pipeline %.0f -> %.0f stages)", static_cast<double>(lb.pp), static_cast<double>(la.pp)));
  if (la.micro_batch != lb.micro_batch)
    out.push_back(fmt("micro-batch %.0f -> %.0f sequences: fewer, larger messages and fewer "
                      "micro-batches per step", static_cast<double>(lb.micro_batch),
                      static_cast<double>(la.micro_batch)));
  if (la.tp != lb.tp)
    out.push_back(fmt("tp %.0f -> %.0f", static_cast<double>(lb.tp), static_cast<double>(la.tp)));
  if (la.schedule != lb.schedule)
    out.push_back(std::string("schedule ") + schedule_name(lb.schedule) + " -> " +
                  schedule_name(la.schedule));
  if (la.recompute != lb.recompute)
    out.push_back(std::string("recompute ") + recompute_name(lb.recompute) + " -> " +
                  recompute_name(la.recompute) + " (memory freed or needed by the new split)");
  return out;
}

}  // namespace moe::plan
