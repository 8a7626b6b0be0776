#include "train/routing_log.h"

#include <algorithm>
#include <cmath>

#include "parallel/parallel.h"

namespace moe {

void accumulate(std::vector<MoeLayerStats>& acc, const std::vector<MoeLayerStats>& s) {
  if (acc.empty()) {
    acc = s;
    return;
  }
  for (size_t i = 0; i < s.size() && i < acc.size(); ++i) {
    MoeLayerStats& a = acc[i];
    for (size_t e = 0; e < a.load.size() && e < s[i].load.size(); ++e) a.load[e] += s[i].load[e];
    a.tokens += s[i].tokens;
    a.slots += s[i].slots;
    a.dropped += s[i].dropped;
    a.entropy_sum += s[i].entropy_sum;
  }
}

void reduce_window(Parallel& par, std::vector<MoeLayerStats>& window) {
  if (!par.distributed() || window.empty()) return;
  std::vector<int64_t> ints;
  std::vector<double> entropy;
  for (const MoeLayerStats& s : window) {
    ints.insert(ints.end(), s.load.begin(), s.load.end());
    ints.insert(ints.end(), {s.tokens, s.slots, s.dropped});
    entropy.push_back(s.entropy_sum);
  }
  par.all_reduce_sum(ints.data(), ints.size());
  par.all_reduce_sum(entropy.data(), entropy.size());
  size_t at = 0;
  for (size_t i = 0; i < window.size(); ++i) {
    MoeLayerStats& s = window[i];
    for (auto& x : s.load) x = ints[at++];
    s.tokens = ints[at++], s.slots = ints[at++], s.dropped = ints[at++];
    s.entropy_sum = entropy[i];
  }
}

void write_moe_records(MetricsLog& log, const Model& model, int64_t step,
                       const std::vector<MoeLayerStats>& window, int64_t ep) {
  for (const MoeLayerStats& s : window) {
    const auto& ld = s.load;
    double sum = 0, mx = 0, mn = HUGE_VAL;
    for (int64_t v : ld)
      sum += double(v), mx = std::max(mx, double(v)), mn = std::min(mn, double(v));
    const double mean = ld.empty() ? 0.0 : sum / double(ld.size());
    const float* bias = model.params().data() + model.layout().layers[size_t(s.layer)].bias;
    const std::vector<float> b(bias, bias + ld.size());
    float bmin = 0, bmax = 0;
    if (!b.empty())
      bmin = *std::min_element(b.begin(), b.end()), bmax = *std::max_element(b.begin(), b.end());
    // Tokens each expert-parallel rank computed (its experts' loads).
    std::vector<int64_t> ep_load(size_t(ep), 0);
    for (size_t e = 0; e < ld.size(); ++e) ep_load[e / (ld.size() / size_t(ep))] += ld[e];
    log.write({{"kind", "moe"},
               {"step", step},
               {"layer", s.layer},
               {"load", ld},
               {"ep_load", ep_load},
               {"max_over_mean", mean > 0 ? mx / mean : 0.0},
               {"min_over_mean", mean > 0 ? mn / mean : 0.0},
               {"router_entropy", s.router_entropy()},
               {"dropped_frac", s.dropped_frac()},
               {"bias", b},
               {"bias_min", bmin},
               {"bias_max", bmax}});
  }
}

}  // namespace moe
