#include "parallel/expert_dispatcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "comm/communicator.h"
#include "core/error.h"

namespace moe {

namespace {

// Adds the seconds f takes to *acc.
template <class F>
void timed(double* acc, F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  *acc += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Grow-only, and never empty (a null buffer is not a valid collective argument even for 0).
template <class V>
void grow(V& v, size_t n) {
  if (v.size() < std::max<size_t>(n, 1)) v.resize(std::max<size_t>(n, 1));
}

}  // namespace

ExpertDispatcher::ExpertDispatcher(std::shared_ptr<comm::Communicator> world,
                                   std::shared_ptr<comm::Communicator> ep_group, int64_t E)
    : world_(std::move(world)), ep_group_(std::move(ep_group)), E_(E) {
  world_size_ = world_ ? world_->size() : 1;
  rank_ = world_ ? world_->rank() : 0;
  ep_ = ep_group_ ? ep_group_->size() : 1;
  ep_rank_ = ep_group_ ? ep_group_->rank() : 0;
  MOE_CHECK(E % ep_ == 0, "parallel", "n_routed_experts = ", E, " is not divisible by ep = ", ep_);
  el_ = E / ep_;
  first_ = int64_t(ep_rank_) * el_;
}

void ExpertDispatcher::exchange_load(const int64_t* load, int64_t* total, int64_t* before,
                                     int64_t E) {
  if (world_size_ == 1) return TokenDispatcher::exchange_load(load, total, before, E);
  grow(gathered_, size_t(world_size_) * size_t(E));
  timed(&seconds_, [&] { world_->all_gather(load, gathered_.data(), size_t(E), Dtype::kI64); });
  for (int64_t e = 0; e < E; ++e) total[e] = before[e] = 0;
  for (int r = 0; r < world_size_; ++r)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t c = gathered_[size_t(r) * size_t(E) + size_t(e)];
      total[e] += c;
      if (r < rank_) before[e] += c;
    }
}

void ExpertDispatcher::plan(ExpertExchange& ex, const int64_t* expert_count, int64_t E) {
  if (ep_ == 1) return TokenDispatcher::plan(ex, expert_count, E);
  MOE_CHECK(E == E_, "parallel", "plan for ", E, " experts on a dispatcher built for ", E_);
  ex.send_rows.assign(size_t(ep_), 0);
  for (int j = 0; j < ep_; ++j)
    for (int64_t e = 0; e < el_; ++e) ex.send_rows[j] += expert_count[j * el_ + e];
  // Rank j gets expert_count[j*El, (j+1)*El): the counts are already laid out as all_to_all's
  // send buffer.
  ex.recv_counts.assign(size_t(ep_) * size_t(el_), 0);
  timed(&seconds_, [&] {
    ep_group_->all_to_all(expert_count, ex.recv_counts.data(), size_t(el_), Dtype::kI64);
  });
  ex.local_offsets.assign(size_t(el_) + 1, 0);
  for (int64_t e = 0; e < el_; ++e) {
    int64_t rows = 0;
    for (int r = 0; r < ep_; ++r) rows += ex.recv_counts[size_t(r) * size_t(el_) + size_t(e)];
    ex.local_offsets[e + 1] = ex.local_offsets[e] + rows;
  }
}

void ExpertDispatcher::offsets(const ExpertExchange& ex, std::vector<int64_t>& rank_major,
                               std::vector<int64_t>& expert_major) const {
  const size_t n = size_t(ep_) * size_t(el_);
  rank_major.assign(n, 0);
  expert_major.assign(n, 0);
  int64_t at = 0;
  for (size_t i = 0; i < n; ++i) rank_major[i] = at, at += ex.recv_counts[i];
  for (int64_t e = 0; e < el_; ++e) {
    int64_t pos = ex.local_offsets[e];
    for (int r = 0; r < ep_; ++r) {
      const size_t i = size_t(r) * size_t(el_) + size_t(e);
      expert_major[i] = pos;
      pos += ex.recv_counts[i];
    }
  }
}

const float* ExpertDispatcher::dispatch(const ExpertExchange& ex, const float* sorted, int64_t D,
                                        std::vector<float>& local) {
  if (ep_ == 1) return TokenDispatcher::dispatch(ex, sorted, D, local);
  const int64_t rows = ex.local_rows();
  grow(staging_, size_t(rows * D));
  grow(local, size_t(rows * D));
  send_counts_.assign(size_t(ep_), 0), send_displs_.assign(size_t(ep_), 0);
  recv_counts_.assign(size_t(ep_), 0), recv_displs_.assign(size_t(ep_), 0);
  size_t at = 0;
  for (int j = 0; j < ep_; ++j) {
    send_counts_[j] = size_t(ex.send_rows[j] * D), send_displs_[j] = at, at += send_counts_[j];
  }
  at = 0;
  for (int r = 0; r < ep_; ++r) {
    int64_t n = 0;
    for (int64_t e = 0; e < el_; ++e) n += ex.recv_counts[size_t(r) * size_t(el_) + size_t(e)];
    recv_counts_[r] = size_t(n * D), recv_displs_[r] = at, at += recv_counts_[r];
  }
  timed(&seconds_, [&] {
    ep_group_->all_to_allv(sorted, send_counts_, send_displs_, staging_.data(), recv_counts_,
                           recv_displs_, Dtype::kF32, dispatch_wire_);
  });
  offsets(ex, rank_major_, expert_major_);
  for (size_t i = 0; i < rank_major_.size(); ++i)
    std::memcpy(local.data() + expert_major_[i] * D, staging_.data() + rank_major_[i] * D,
                sizeof(float) * size_t(ex.recv_counts[i] * D));
  return local.data();
}

const float* ExpertDispatcher::combine(const ExpertExchange& ex, const float* local, int64_t D,
                                       std::vector<float>& sorted) {
  if (ep_ == 1) return TokenDispatcher::combine(ex, local, D, sorted);
  int64_t home_rows = 0;
  for (int j = 0; j < ep_; ++j) home_rows += ex.send_rows[j];
  grow(staging_, size_t(ex.local_rows() * D));
  grow(sorted, size_t(home_rows * D));
  offsets(ex, rank_major_, expert_major_);
  for (size_t i = 0; i < rank_major_.size(); ++i)
    std::memcpy(staging_.data() + rank_major_[i] * D, local + expert_major_[i] * D,
                sizeof(float) * size_t(ex.recv_counts[i] * D));
  // The reverse trip: what came from rank r goes back to it, and what went to rank j returns.
  send_counts_.assign(size_t(ep_), 0), send_displs_.assign(size_t(ep_), 0);
  recv_counts_.assign(size_t(ep_), 0), recv_displs_.assign(size_t(ep_), 0);
  size_t at = 0;
  for (int r = 0; r < ep_; ++r) {
    int64_t n = 0;
    for (int64_t e = 0; e < el_; ++e) n += ex.recv_counts[size_t(r) * size_t(el_) + size_t(e)];
    send_counts_[r] = size_t(n * D), send_displs_[r] = at, at += send_counts_[r];
  }
  at = 0;
  for (int j = 0; j < ep_; ++j) {
    recv_counts_[j] = size_t(ex.send_rows[j] * D), recv_displs_[j] = at, at += recv_counts_[j];
  }
  timed(&seconds_, [&] {
    ep_group_->all_to_allv(staging_.data(), send_counts_, send_displs_, sorted.data(), recv_counts_,
                           recv_displs_, Dtype::kF32, combine_wire_);
  });
  return sorted.data();
}

}  // namespace moe
