// Data and expert parallelism (DESIGN.md section 10): the dp x ep grid of Megatron-Core, the
// all-to-all token dispatcher, gradient buckets reduce-scattered during backward, the ZeRO-1
// optimizer shard and the all-gather of parameters, and the gather / reshard of checkpoints.
//
// world = dp x ep ranks. Rank r is expert-parallel rank r % ep of its EP group (ep consecutive
// ranks, so an EP group stays on one host when it can) and data-parallel rank r / ep of its
// expert-data-parallel group (the ranks with the same r % ep). Attention, dense and shared
// weights, routers and embeddings are replicated on every rank and their gradients are reduced
// over the whole world; the routed experts of a layer are split into ep equal ranges, one per
// EP rank, and their gradients are reduced over the expert-data-parallel group. Every rank
// reads its own slice of each global micro-batch, so the job trains on the batches of one
// process: same losses within rounding (tests/integration/test_parallel.cpp).
//
// DiLoCo ([parallel] mode = "diloco", diloco.h): the job's ranks form groups of G consecutive
// ranks and each group is such a dp x ep grid of its own (its gradient buckets, dispatcher,
// ZeRO-1 shards and all-gathers stay inside it). What every rank must agree on is reduced over
// the whole job: all_reduce_sum/max, check_same, the loss and the stop flags. The ranks with
// the same index in their groups hold the same layout and share the cross-group communicator.
//
// With one process (no communicator) every call is a no-op or a copy, so the trainer has one
// code path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/params.h"
#include "train/optimizer.h"

namespace moe {

namespace comm {
class Communicator;
class Work;
}  // namespace comm

struct ParallelConfig {  // [parallel]
  int64_t dp = 0;        // expert-data-parallel size, e.g. 2 (0 = world / ep)
  int64_t ep = 1;        // expert-parallel size, e.g. 4; divides n_routed_experts
  double bucket_mb = 4;  // gradient bucket size (MiB of fp32 gradients), e.g. 4
  bool overlap = true;   // reduce-scatter buckets during backward, as their layers finish
  // Compressed communication for slow links (DeepSeek-V3's dispatch format; 1-bit Adam /
  // EF-SGD style error feedback for gradients).
  std::string dispatch_dtype = "fp32";  // expert dispatch rows on the wire: fp32, bf16, fp8
  std::string combine_dtype = "fp32";   // expert outputs on the way home: fp32, bf16
  std::string grad_comm_dtype = "fp32";  // gradient reduce-scatter: fp32, bf16, int8
  bool error_feedback = true;  // compressed gradients: carry each rank's rounding residual
  // DiLoCo (Douillard et al. 2023): groups of ranks train alone for inner_steps steps, then
  // average their pseudo-gradients and take one outer Nesterov step.
  std::string mode = "sync";      // "sync" (every step) or "diloco"
  int64_t inner_steps = 50;       // diloco: local steps between outer syncs, e.g. 50
  double outer_lr = 0.7;          // diloco: outer Nesterov learning rate
  double outer_momentum = 0.9;    // diloco: outer Nesterov momentum
  int64_t diloco_group = 0;       // diloco: ranks per group (0 = the ranks of one host)
  std::string outer_comm_dtype = "fp32";  // diloco pseudo-gradients on the wire: fp32, int8
};

// The logical training state in the full layout (make_layout(cfg)): what a checkpoint holds,
// whatever the layout of the ranks that wrote it.
struct FullTrainTensors {
  std::vector<float> params, m, v;  // [full total_numel] each
};

// Time spent in communication, for telemetry (seconds, since the last take()).
struct CommTimes {
  double grad_wait = 0;     // waiting for gradient reduce-scatters after backward (exposed)
  double param_gather = 0;  // waiting for the all-gather of the updated parameters
  double dispatch = 0;      // expert-parallel all-to-alls and load exchanges in forward/backward
};

// Bytes this process sent (all its communicators), per step since the last take_traffic():
// in all, and to ranks on other hosts, by collective kind.
struct Traffic {
  double sent = 0, inter_host = 0;                // bytes
  double reduce_scatter = 0, all_gather = 0;      // to other hosts
  double all_to_all = 0, all_reduce = 0, other = 0;
};

class ExpertDispatcher;  // expert_dispatcher.h

class Parallel {
 public:
  // world: null or a 1-rank communicator for one process. Throws on a layout that does not fit
  // (world not dp x ep, experts not divisible by ep, DiLoCo groups not dividing the world,
  // ...), naming the keys and the fix.
  Parallel(std::shared_ptr<comm::Communicator> world, const ParallelConfig& cfg,
           const ModelConfig& model);
  ~Parallel();

  bool distributed() const { return world_size_ > 1; }
  int rank() const { return rank_; }              // in the job
  int world_size() const { return world_size_; }  // the job's ranks
  int dp() const { return dp_; }                  // inside a group (DiLoCo) or the job
  int ep() const { return ep_; }
  int ep_rank() const { return group_rank_ % ep_; }
  int dp_rank() const { return group_rank_ / ep_; }
  std::string describe() const;  // "4 ranks: dp 2 x ep 2 (experts 4 per rank)"
  const ParallelConfig& config() const { return cfg_; }

  // DiLoCo groups: `groups()` groups of `group_ranks()` consecutive ranks (sync mode: one group,
  // the job). group_index() is this rank's group, group_rank() its index inside it.
  bool diloco() const { return cfg_.mode == "diloco"; }
  int groups() const { return world_size_ / group_ranks_; }
  int group_ranks() const { return group_ranks_; }
  int group_index() const { return rank_ / group_ranks_; }
  int group_rank() const { return group_rank_; }
  // The ranks with this rank's group_rank() in every group, ordered by group (null with one
  // group): they hold the same parameters and optimizer shards.
  const std::shared_ptr<comm::Communicator>& cross_group() const { return cross_; }

  // The part of the model this rank holds (its experts; regions padded for equal shards).
  LayoutOptions layout_options() const;
  // Installs the dispatcher and builds the gradient buckets for model (built with
  // layout_options()); the optimizer's owned ranges follow.
  void attach(Model& model);
  // The arena ranges this rank's optimizer updates (ZeRO-1 shards; the whole arena alone).
  const std::vector<ArenaRange>& owned() const { return owned_; }

  // This rank's sequences of a global micro-batch of B: [first, first + count).
  int64_t local_batch(int64_t B) const;
  int64_t batch_first(int64_t B) const { return local_batch(B) * rank_; }

  // Gradient sync of one step. Call before the last micro-batch's forward_backward: its
  // backward then launches each bucket's reduce-scatter as the bucket's layers finish (if
  // overlap). finish_grads() launches the rest, waits, and leaves this rank's shard of the
  // averaged gradient in shard_grads() (the arena itself on one process).
  void arm_overlap(Model& model);
  void finish_grads(Model& model);
  float* shard_grads();
  int64_t shard_numel() const;
  // Sum of squares of the averaged gradient over the whole model (every rank gets it).
  double grad_norm_sq();
  void scale_shard_grads(float k);
  // After the optimizer updated this rank's shard: every rank gets every updated parameter.
  // With overlap the all-gathers run on the communicators' threads and the next forward waits
  // for each bucket just before the first layer that reads it; wait_params() waits for all
  // (before anything else reads or writes the parameters: evaluation, checkpoints).
  void gather_params(Model& model);
  void wait_params();

  // Sums over the whole job, in place (no-ops alone).
  void all_reduce_sum(double* v, size_t n);
  void all_reduce_sum(int64_t* v, size_t n);
  void all_reduce_max(double* v, size_t n);
  // The routing loads of the step summed over the group (the job in sync mode), before the
  // bias update.
  void reduce_load(Model& model);
  // Throws on every rank unless every rank passed the same text ("rank 3 runs config abc,
  // rank 0 runs def"): the resolved run config, so no rank trains another model.
  void check_same(const std::string& what, const std::string& text);

  // Checkpoints: the logical state, complete on rank 0 of each group (collective over the group;
  // others get empty vectors), and this rank's part of a logical state read from disk (no
  // communication).
  FullTrainTensors gather_full(const Model& model, const AdamW& opt);
  void load_full(const FullTrainTensors& full, Model& model, AdamW& opt) const;
  // The same for any state kept like the AdamW moments (owned() ranges back to back):
  // [full total_numel] on rank 0 of each group (collective over the group), and back.
  std::vector<float> gather_state(const std::vector<float>& packed);
  void load_state(const std::vector<float>& full, std::vector<float>& packed) const;

  CommTimes take_comm_times();
  Traffic take_traffic();
  // Bytes of optimizer moments this rank keeps (ZeRO-1: about 1/dp of one process's).
  int64_t optimizer_bytes(const AdamW& opt) const {
    return int64_t(opt.m().size() + opt.v().size()) * 4;
  }

 private:
  struct Bucket {
    int64_t begin = 0, size = 0;  // arena range; size a multiple of the group size
    int64_t ready = 0;            // the smallest part inside (model.h: L head, -1 embedding)
    int64_t shard = 0;            // where this rank's chunk starts in the shard buffer
    bool expert = false;          // reduced over the expert-data-parallel group
    std::shared_ptr<comm::Work> work;
    // Error feedback of compressed gradients: what this rank's encoding lost last step, for
    // each value of the bucket ([size]; empty without compression or feedback).
    std::vector<float> residual;
  };
  void launch(Model& model, Bucket& b);
  comm::Communicator* group(const Bucket& b) const;
  int group_size(const Bucket& b) const { return b.expert ? dp_ : group_ranks_; }
  int group_rank(const Bucket& b) const { return b.expert ? dp_rank() : group_rank_; }
  bool sharded() const { return group_ranks_ > 1; }  // the group trains on several ranks

  // world_: the job. train_: the ranks that train as one dp x ep grid (the job, or this rank's
  // DiLoCo group); ep_comm_ and edp_comm_ are split from it. cross_: see cross_group().
  std::shared_ptr<comm::Communicator> world_, train_, ep_comm_, edp_comm_, cross_;
  int rank_ = 0, world_size_ = 1, dp_ = 1, ep_ = 1;
  int group_ranks_ = 1, group_rank_ = 0;
  ParallelConfig cfg_;
  ModelConfig model_cfg_;
  std::unique_ptr<ExpertDispatcher> dispatcher_;
  Model* model_ = nullptr;       // attach()
  std::vector<Bucket> buckets_;  // in launch order: last layers first
  size_t next_ = 0;              // buckets_[0, next_) launched this step
  // Parameter all-gathers in flight, in the order forward needs them (first layers first).
  std::vector<std::shared_ptr<comm::Work>> gathers_;
  std::vector<int64_t> gather_ready_;  // the layer before which gathers_[i] must be done
  size_t gather_next_ = 0;             // gathers_[0, gather_next_) waited for
  std::vector<ArenaRange> owned_;
  std::vector<float> shard_grads_, shard_params_;
  CommTimes times_;
  uint8_t grad_wire_ = 0;  // comm::Wire of the gradient reduce-scatters
  std::vector<double> traffic_last_;  // the counters at the last take_traffic()
};

}  // namespace moe
