// The all-to-all token dispatcher (Megatron-Core's MoEAlltoAllTokenDispatcher, for CPUs).
//
// Each EP rank owns El = E / ep consecutive experts. A rank's expert-sorted rows are already
// the send buffer: the rows of rank j's experts are contiguous. Forward, per MoE layer:
//   plan:     all_to_all of the per-expert row counts (El values to each EP rank)
//   dispatch: all_to_allv of the rows; they arrive rank-major and are regrouped expert-major
//             (for each local expert: rank 0's rows, rank 1's, ...), which is the order one
//             process would have: the global token order is rank 0's tokens first
//   combine:  the reverse (regroup rank-major, all_to_allv back)
// Backward sends the gradient rows the same routes. Load exchange (aux loss, capacity):
// all_gather of the per-expert counts over every data rank of the world.
#pragma once

#include <memory>
#include <vector>

#include "comm/compression.h"
#include "model/token_dispatcher.h"

namespace moe {

namespace comm {
class Communicator;
}  // namespace comm

class ExpertDispatcher : public TokenDispatcher {
 public:
  // world: every data rank (load exchange); ep_group: the ranks that share this rank's experts
  // (size ep, this rank's index there = its EP rank). E routed experts, divisible by ep.
  ExpertDispatcher(std::shared_ptr<comm::Communicator> world,
                   std::shared_ptr<comm::Communicator> ep_group, int64_t E);

  bool local() const override { return ep_ == 1; }
  int64_t data_ranks() const override { return world_size_; }
  int64_t expert_first() const override { return first_; }
  int64_t experts_local(int64_t) const override { return el_; }

  void exchange_load(const int64_t* load, int64_t* total, int64_t* before, int64_t E) override;
  void plan(ExpertExchange& ex, const int64_t* expert_count, int64_t E) override;
  const float* dispatch(const ExpertExchange& ex, const float* sorted, int64_t D,
                        std::vector<float>& local) override;
  const float* combine(const ExpertExchange& ex, const float* local, int64_t D,
                       std::vector<float>& sorted) override;

  // How rows travel (comm/compression.h): dispatch (forward inputs, backward output
  // gradients) and combine (forward outputs, backward input gradients). Rows a rank keeps for
  // its own experts are never encoded. Scales cover 128 consecutive values: 1x128 tiles of each row
  // when D is a multiple of 128, as in DeepSeek-V3.
  void set_wire(comm::Wire dispatch, comm::Wire combine) {
    dispatch_wire_ = dispatch, combine_wire_ = combine;
  }

  double seconds() const { return seconds_; }  // in collectives since construction
  void clear_seconds() { seconds_ = 0; }

 private:
  // Rows from rank r for local expert j start at rank_major[r * El + j] in the received buffer
  // and at expert_major[r * El + j] in the local buffer.
  void offsets(const ExpertExchange& ex, std::vector<int64_t>& rank_major,
               std::vector<int64_t>& expert_major) const;

  std::shared_ptr<comm::Communicator> world_, ep_group_;
  int world_size_ = 1, rank_ = 0, ep_ = 1, ep_rank_ = 0;
  int64_t E_ = 0, el_ = 0, first_ = 0;
  std::vector<int64_t> gathered_;  // (world, E) loads
  std::vector<float> staging_;     // rank-major rows in flight
  std::vector<int64_t> rank_major_, expert_major_;
  std::vector<size_t> send_counts_, send_displs_, recv_counts_, recv_displs_;
  double seconds_ = 0;
  comm::Wire dispatch_wire_ = comm::Wire::kAsIs, combine_wire_ = comm::Wire::kAsIs;
};

}  // namespace moe
