// Layout search: enumerate tp, pp (+ virtual stages), ep, micro-batch, schedule, recompute,
// ZeRO stage, dtype and node-limited routing; keep what fits memory; rank by tokens/s/device.
#pragma once

#include <string>
#include <vector>

#include "plan/cost.h"

namespace moe::plan {

struct SearchOptions {
  std::vector<Dtype> dtypes = {Dtype::kBf16};  // e.g. {kBf16, kFp8}
  std::vector<int64_t> micro_batches = {1, 2, 4, 8};
  size_t keep = 10;                            // rows returned
};

struct Candidate {
  Layout layout;
  Memory memory;
  Time time;
};

struct SearchResult {
  std::vector<Candidate> top;  // best first, one per layout up to ZeRO stage/node limit
  int64_t considered = 0;      // layouts that could run the job
  int64_t fit = 0;             // of those, the ones that fit memory
};

Candidate evaluate(const PlanModel& m, const Cluster& c, const Job& job, const Layout& l);
SearchResult search(const PlanModel& m, const Cluster& c, const Job& job, const SearchOptions& o);

// A copy of the cluster with inter-node bandwidth multiplied by `scale` (what-if).
Cluster scale_inter_bandwidth(const Cluster& c, double scale);

// Lines saying how and why the best layout moved between two clusters: which dimensions
// changed and what the old layout's terms become on the new cluster.
std::vector<std::string> explain_change(const PlanModel& m, const Cluster& before,
                                        const Cluster& after, const Job& job,
                                        const Candidate& best_before,
                                        const Candidate& best_after);

}  // namespace moe::plan
