// The MoE layer's only door to other ranks (DESIGN.md section 9). On one process the local
// dispatcher hands the expert-sorted rows straight to the experts; src/parallel's all-to-all
// dispatcher sends them to the expert-parallel ranks that own their experts and brings the
// outputs home. The same model code runs on one process or many.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moe {

// One MoE layer's exchange in one micro-batch, made by plan() in forward and reused by the
// backward pass (gradients travel the same routes in the same amounts).
struct ExpertExchange {
  std::vector<int64_t> send_rows;      // (R) rows this rank sends to each expert-parallel rank
  std::vector<int64_t> recv_counts;    // (R, El) rows from rank r for local expert j
  std::vector<int64_t> local_offsets;  // (El+1) offsets of the local rows, grouped by local expert
  int64_t local_rows() const { return local_offsets.empty() ? 0 : local_offsets.back(); }
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;

  // True when every expert is on this rank and dispatch/combine move nothing.
  virtual bool local() const { return true; }
  // Ranks that each hold a slice of the global micro-batch (1 on one process).
  virtual int64_t data_ranks() const { return 1; }
  // Routed experts this rank computes: [expert_first(), expert_first() + experts_local()).
  virtual int64_t expert_first() const { return 0; }
  virtual int64_t experts_local(int64_t E) const { return E; }

  // load (E): this rank's selections per expert. total (E): the sum over the data ranks;
  // before (E): the sum over the data ranks before this one (capacity counts in token order,
  // and the global token order is rank 0's tokens first).
  virtual void exchange_load(const int64_t* load, int64_t* total, int64_t* before, int64_t E) {
    std::copy(load, load + E, total);
    std::fill(before, before + E, int64_t(0));
  }

  // expert_count (E): rows of each expert in this rank's expert-sorted buffer.
  virtual void plan(ExpertExchange& ex, const int64_t* expert_count, int64_t E) {
    ex.send_rows.assign(1, 0);
    ex.recv_counts.assign(expert_count, expert_count + E);
    ex.local_offsets.assign(size_t(E) + 1, 0);
    for (int64_t e = 0; e < E; ++e) ex.local_offsets[e + 1] = ex.local_offsets[e] + expert_count[e];
    ex.send_rows[0] = ex.local_offsets[E];
  }
  // sorted (M, D) rows by expert -> rows of this rank's experts, grouped by local expert
  // (ex.local_rows() of them) in `local`. The local dispatcher leaves `local` alone and uses
  // `sorted` as it is: callers read the rows through the returned pointer.
  virtual const float* dispatch(const ExpertExchange&, const float* sorted, int64_t /*D*/,
                                std::vector<float>& /*local*/) {
    return sorted;
  }
  // The reverse trip: local (ex.local_rows(), D) -> rows in this rank's expert-sorted order.
  virtual const float* combine(const ExpertExchange&, const float* local, int64_t /*D*/,
                               std::vector<float>& /*sorted*/) {
    return local;
  }
};

// The dispatcher of a model that runs on one process.
inline TokenDispatcher& local_dispatcher() {
  static TokenDispatcher d;
  return d;
}

}  // namespace moe
