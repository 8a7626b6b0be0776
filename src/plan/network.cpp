#include "plan/network.h"

#include <algorithm>
#include <cmath>

namespace moe::plan {

double ring_time(double bytes, int64_t n, double bandwidth, double latency) {
  if (n <= 1) return 0.0;
  const double f = static_cast<double>(n - 1) / static_cast<double>(n);
  return f * bytes / bandwidth + static_cast<double>(n - 1) * latency;
}

int64_t nodes_spanned(int64_t size, int64_t stride, int64_t per_node) {
  if (size <= 1) return 1;
  if (stride >= per_node) return size;  // every member on its own node
  const int64_t extent = size * stride;  // ranks from first to one past the last member
  return std::max<int64_t>(1, (extent + per_node - 1) / per_node);
}

double expected_nodes_touched(int64_t k, int64_t g) {
  if (g <= 1) return 1.0;
  const double gd = static_cast<double>(g);
  return gd * (1.0 - std::pow(1.0 - 1.0 / gd, static_cast<double>(k)));
}

GroupSpan group_span(int64_t n, int64_t stride, int64_t devices_per_node) {
  GroupSpan g;
  g.n = std::max<int64_t>(1, n);
  g.nodes = nodes_spanned(g.n, stride, devices_per_node);
  g.per_node = static_cast<double>(g.n) / static_cast<double>(g.nodes);
  // Members fill nodes in order (member k on node k * stride / devices_per_node): even if
  // every run of members on one node is as long as the first.
  if (g.nodes > 1 && stride < devices_per_node) {
    int64_t first = 0, run = 0, node = 0;
    for (int64_t k = 0; k < g.n && g.even; ++k) {
      const int64_t at = k * stride / devices_per_node;
      if (at != node) {
        if (first == 0) first = run;
        else if (run != first) g.even = false;
        node = at, run = 0;
      }
      ++run;
    }
    if (g.even && run != first) g.even = false;
  }
  return g;
}

CommCost ring_collective(const Cluster& c, double bytes, const GroupSpan& g) {
  CommCost r;
  if (g.n <= 1 || bytes <= 0) return r;
  const double f = static_cast<double>(g.n - 1) / static_cast<double>(g.n);
  const double edge = f * bytes;  // what every ring edge carries
  const double intra_bw = c.intra_bandwidth * c.eff.intra_comm;
  if (g.nodes <= 1) {
    r.intra_bytes = edge;
    r.time = edge / intra_bw + static_cast<double>(g.n - 1) * c.intra_latency;
    return r;
  }
  // The node's one outgoing edge carries `edge` through the NIC shares of its r members.
  const double node_bw = g.per_node * c.inter_bandwidth * c.eff.inter_comm;
  r.inter_bytes = edge / g.per_node;
  r.intra_bytes = edge * (g.per_node - 1) / g.per_node;
  r.time = edge / std::min(intra_bw, node_bw) + static_cast<double>(g.n - 1) * c.inter_latency;
  return r;
}

CommCost direct_exchange(const Cluster& c, double bytes, const GroupSpan& g) {
  CommCost r;
  if (g.n <= 1 || bytes <= 0) return r;
  const double n = static_cast<double>(g.n);
  r.inter_bytes = (n - g.per_node) / n * bytes;
  r.intra_bytes = (g.per_node - 1) / n * bytes;
  const double t_inter = r.inter_bytes / (c.inter_bandwidth * c.eff.inter_comm);
  const double t_intra = r.intra_bytes / (c.intra_bandwidth * c.eff.intra_comm);
  r.time = std::max(t_inter, t_intra) + (g.nodes > 1 ? c.inter_latency : c.intra_latency);
  return r;
}

CommCost compressed_reduce_scatter(const Cluster& c, double values, double wire,
                                   const GroupSpan& g) {
  const double L = g.per_node;
  if (g.n <= 1 || values <= 0 || g.nodes <= 1 || !g.even || L <= 1)
    return direct_exchange(c, wire * values, g);
  // Two-level (network.h): intra = (L-1)/L * 4V in f32, inter = (H-1)/n * wV encoded.
  CommCost r;
  const double n = static_cast<double>(g.n), H = static_cast<double>(g.nodes);
  r.intra_bytes = (L - 1.0) * H * (values / n) * 4.0;
  r.inter_bytes = (H - 1.0) * wire * (values / n);
  r.time = r.intra_bytes / (c.intra_bandwidth * c.eff.intra_comm) + c.intra_latency +
           r.inter_bytes / (c.inter_bandwidth * c.eff.inter_comm) + c.inter_latency;
  return r;
}

A2aBytes a2a_bytes(const PlanModel& m, const Cluster& c, const Layout& l, double tokens,
                   double elem_bytes) {
  A2aBytes b;
  if (l.ep <= 1) return b;
  const double D = static_cast<double>(m.cfg.hidden_size);
  const int64_t K = m.cfg.num_experts_per_tok;
  const int64_t G = nodes_spanned(l.ep, 1, c.devices_per_node);  // nodes of one ep group
  const double per_node = static_cast<double>(l.ep) / static_cast<double>(G);
  const double ep = static_cast<double>(l.ep);
  const double row = D * elem_bytes;
  if (!l.node_limited || G == 1 || !l.dedup) {
    // Each of the K copies goes to a uniformly random expert: off-node with probability
    // (ep - per_node)/ep, to another device of this node with (per_node - 1)/ep. Node-limited
    // routing without dedup changes which nodes a token reaches, not this expectation.
    b.inter = tokens * K * (ep - per_node) / ep * row;
    b.intra = tokens * K * (per_node - 1) / ep * row;
    return b;
  }
  // Node-limited routing (DeepSeek-V3 sec. 2.1.2 and 3.2.2): a token reaches at most
  // `cap` nodes, is sent once to each over the network and forwarded inside the node.
  const int64_t ng = m.cfg.n_group, tg = m.cfg.topk_group;
  const int64_t cap = std::min<int64_t>(G, (tg * G + ng - 1) / ng);
  const double nodes = std::min(expected_nodes_touched(K, G), static_cast<double>(cap));
  const double remote = nodes * static_cast<double>(G - 1) / static_cast<double>(G);
  b.inter = tokens * remote * row;
  b.intra = tokens * K * (per_node - 1) / per_node * row;
  return b;
}

double a2a_time(const Cluster& c, const A2aBytes& b, bool crosses_nodes) {
  const double t_inter = b.inter / (c.inter_bandwidth * c.eff.inter_comm);
  const double t_intra = b.intra / (c.intra_bandwidth * c.eff.intra_comm);
  if (b.inter <= 0 && b.intra <= 0) return 0.0;
  return std::max(t_inter, t_intra) + (crosses_nodes ? c.inter_latency : c.intra_latency);
}

}  // namespace moe::plan
