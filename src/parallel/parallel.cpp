#include "parallel/parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <unordered_map>

#include "comm/communicator.h"
#include "core/error.h"
#include "parallel/expert_dispatcher.h"

namespace moe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string hex(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Each piece of an owned range that belongs to a parameter: where it is in the arena, in the
// packed optimizer state, and in the full layout (make_layout(cfg)). Gaps between regions
// belong to no parameter and are skipped.
using PieceFn = std::function<void(int64_t arena, int64_t state, int64_t full, int64_t n)>;
void for_each_piece(const ParamLayout& local, const ParamLayout& full,
                    const std::vector<ArenaRange>& owned, const PieceFn& fn) {
  std::unordered_map<std::string, int64_t> full_offset;
  for (const ParamSpec& s : full.specs) full_offset[s.name] = s.offset;
  int64_t state = 0;
  for (const ArenaRange& r : owned) {
    for (const ParamSpec& s : local.specs) {
      const int64_t a = std::max(s.offset, r.offset);
      const int64_t b = std::min(s.offset + s.numel, r.offset + r.numel);
      if (a >= b) continue;
      const auto it = full_offset.find(s.name);
      MOE_CHECK(it != full_offset.end(), "parallel", "tensor ", s.name,
                " is not in the model's full layout");
      fn(a, state + (a - r.offset), it->second + (a - s.offset), b - a);
    }
    state += r.numel;
  }
}

}  // namespace

Parallel::Parallel(std::shared_ptr<comm::Communicator> world, const ParallelConfig& cfg,
                   const ModelConfig& model)
    : world_(std::move(world)), cfg_(cfg), model_cfg_(model) {
  world_size_ = world_ ? world_->size() : 1;
  rank_ = world_ ? world_->rank() : 0;
  // DiLoCo: groups of G consecutive ranks, each training as the grid below.
  group_ranks_ = world_size_;
  MOE_CHECK(cfg.mode == "sync" || cfg.mode == "diloco", "parallel", "[parallel] mode = \"",
            cfg.mode, "\" is not a mode; use \"sync\" or \"diloco\"");
  if (cfg.mode == "diloco") {
    MOE_CHECK(cfg.inner_steps >= 1, "parallel", "[parallel] inner_steps = ", cfg.inner_steps,
              " must be at least 1");
    MOE_CHECK(cfg.outer_comm_dtype == "fp32" || cfg.outer_comm_dtype == "int8", "parallel",
              "[parallel] outer_comm_dtype = \"", cfg.outer_comm_dtype,
              "\" is not a wire format for pseudo-gradients; use \"fp32\" or \"int8\"");
    if (cfg.diloco_group > 0) {
      MOE_CHECK(world_size_ % cfg.diloco_group == 0, "parallel", "the job has ", world_size_,
                " ranks, not divisible by [parallel] diloco_group = ", cfg.diloco_group,
                "; choose a divisor of ", world_size_, " (0 = the ranks of one host)");
      group_ranks_ = int(cfg.diloco_group);
    } else if (world_) {
      // One group per host: every host must hold the same number of consecutive ranks.
      group_ranks_ = world_->local_size();
      const std::vector<int>& host = world_->host_of();
      bool fits = world_size_ % group_ranks_ == 0;
      for (int r = 0; fits && r < world_size_; ++r)
        fits = host[size_t(r)] == host[size_t(r / group_ranks_ * group_ranks_)];
      MOE_CHECK(fits, "parallel", "[parallel] diloco_group = 0 makes one group per host, but the ",
                world_size_, " ranks are not ", world_size_ / std::max(1, group_ranks_),
                " hosts of ", group_ranks_,
                " consecutive ranks each; set diloco_group to the ranks per group");
    }
  }
  group_rank_ = rank_ % group_ranks_;
  const bool dl = cfg.mode == "diloco";
  const std::string who = dl ? "a DiLoCo group has " + std::to_string(group_ranks_) +
                                   (group_ranks_ == 1 ? " rank" : " ranks")
                             : "the job has " + std::to_string(world_size_) + " ranks";
  MOE_CHECK(cfg.ep >= 1, "parallel", "[parallel] ep = ", cfg.ep, " must be at least 1");
  MOE_CHECK(cfg.dp >= 0, "parallel", "[parallel] dp = ", cfg.dp, " must be 0 (auto) or more");
  MOE_CHECK(group_ranks_ % cfg.ep == 0, "parallel", who,
            ", not divisible by [parallel] ep = ", cfg.ep, "; start dp x ep ranks",
            dl ? " per group" : "", " (e.g. moe launch --nproc-per-node ", cfg.ep, ")");
  ep_ = int(cfg.ep);
  dp_ = cfg.dp > 0 ? int(cfg.dp) : group_ranks_ / ep_;
  MOE_CHECK(int64_t(dp_) * ep_ == group_ranks_, "parallel", "[parallel] dp = ", dp_,
            " x ep = ", ep_, " is ", int64_t(dp_) * ep_, " ranks but ", who,
            "; set dp = 0 (auto) or start ", int64_t(dp_) * ep_, " ranks", dl ? " per group" : "");
  const int64_t E = model.n_routed_experts;
  bool has_moe = false;
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) has_moe |= model.is_moe_layer(l);
  MOE_CHECK(ep_ == 1 || has_moe, "parallel", "[parallel] ep = ", ep_,
            " but the model has no MoE layer; use ep = 1");
  MOE_CHECK(E % ep_ == 0, "parallel", "[model] n_routed_experts = ", E,
            " is not divisible by [parallel] ep = ", ep_, "; choose ep among the divisors of ", E);
  MOE_CHECK(cfg.bucket_mb > 0, "parallel", "[parallel] bucket_mb = ", cfg.bucket_mb,
            " must be positive");
  // Wire formats, checked before any collective so a bad value fails on every rank alike.
  const comm::Wire grad_wire = comm::parse_wire(cfg.grad_comm_dtype, "[parallel] grad_comm_dtype");
  const comm::Wire dispatch_wire = comm::parse_wire(cfg.dispatch_dtype, "[parallel] dispatch_dtype");
  const comm::Wire combine_wire = comm::parse_wire(cfg.combine_dtype, "[parallel] combine_dtype");
  MOE_CHECK(grad_wire != comm::Wire::kFP8, "parallel", "[parallel] grad_comm_dtype = \"fp8\": ",
            "gradients travel as fp32, bf16 or int8 (fp8 is for dispatch_dtype)");
  MOE_CHECK(combine_wire == comm::Wire::kAsIs || combine_wire == comm::Wire::kBF16, "parallel",
            "[parallel] combine_dtype = \"", cfg.combine_dtype,
            "\": expert outputs travel as fp32 or bf16");
  if (world_size_ > 1) {
    // Collective over the world, in the same order on every rank.
    train_ = world_;
    if (group_ranks_ < world_size_) {
      train_ = world_->split(rank_ / group_ranks_, rank_);  // G consecutive ranks
      cross_ = world_->split(group_rank_, rank_);           // one rank of each group
    }
    if (sharded()) {
      ep_comm_ = train_->split(group_rank_ / ep_, group_rank_);   // ep consecutive ranks
      edp_comm_ = train_->split(group_rank_ % ep_, group_rank_);  // ranks holding the same experts
      dispatcher_ = std::make_unique<ExpertDispatcher>(train_, ep_comm_, E);
      dispatcher_->set_wire(dispatch_wire, combine_wire);
    }
  }
  grad_wire_ = uint8_t(grad_wire);
}

Parallel::~Parallel() = default;

std::string Parallel::describe() const {
  std::string s = std::to_string(world_size_) + (world_size_ == 1 ? " rank" : " ranks") + ": ";
  if (diloco())
    s += "DiLoCo, " + std::to_string(groups()) + (groups() == 1 ? " group of " : " groups of ") +
         std::to_string(group_ranks_) + (group_ranks_ == 1 ? " rank" : " ranks") +
         " (outer sync every " + std::to_string(cfg_.inner_steps) + " steps), each ";
  s += "dp " + std::to_string(dp_) + " x ep " + std::to_string(ep_);
  if (ep_ > 1)
    s += " (" + std::to_string(model_cfg_.n_routed_experts / ep_) + " of " +
         std::to_string(model_cfg_.n_routed_experts) + " experts per rank)";
  return s;
}

LayoutOptions Parallel::layout_options() const {
  LayoutOptions o;
  const int64_t el = model_cfg_.n_routed_experts / ep_;
  o.expert_first = int64_t(ep_rank()) * el;
  o.expert_count = el;
  // Every region splits into equal chunks for the world (replicated) and for dp (experts);
  // 16 floats keep each chunk 64-byte aligned.
  o.align = sharded() ? 16 * int64_t(group_ranks_) : 1;
  return o;
}

void Parallel::attach(Model& model) {
  const ParamLayout& lay = model.layout();
  model_ = &model;
  owned_.clear();
  buckets_.clear();
  if (!sharded()) {
    owned_.push_back({0, lay.total_numel});
    return;
  }
  model.set_dispatcher(dispatcher_.get());
  const int64_t L = model.config().num_hidden_layers;
  const int64_t M = model.config().num_nextn_predict_layers;
  const int64_t align = layout_options().align;
  // The model's parts (model.h): MTP module k (layer index L + k) is part L + 1 + k, done
  // first; then the head L (final norm, lm_head); layers L-1 .. 0; the embedding -1 last.
  auto ready_of = [&](const ParamSpec& s) {
    if (s.layer >= L) return s.layer + 1;
    if (s.layer >= 0) return s.layer;
    return s.offset == lay.embed ? int64_t(-1) : L;
  };
  const int64_t target = std::max(align, int64_t(cfg_.bucket_mb * 1024 * 1024 / 4) / align * align);
  // Buckets from each region's end down (backward finishes the last layers first).
  auto add_region = [&](int64_t begin, int64_t end, bool expert) {
    MOE_CHECK(begin % align == 0 && end % align == 0, "parallel", "region [", begin, ", ", end,
              ") is not aligned to ", align);
    for (int64_t hi = end; hi > begin;) {
      const int64_t lo = std::max(begin, hi - target);
      Bucket b;
      b.begin = lo, b.size = hi - lo, b.expert = expert, b.ready = L + M + 1;  // only gaps
      for (const ParamSpec& s : lay.specs)
        if (s.offset < hi && s.offset + s.numel > lo) b.ready = std::min(b.ready, ready_of(s));
      buckets_.push_back(b);
      hi = lo;
    }
  };
  add_region(0, lay.expert_begin, false);
  add_region(lay.expert_begin, lay.total_numel, true);
  // This rank's chunk of each bucket, in arena order, is its optimizer shard.
  std::vector<Bucket*> by_offset;
  for (Bucket& b : buckets_) by_offset.push_back(&b);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Bucket* a, const Bucket* b) { return a->begin < b->begin; });
  int64_t shard = 0;
  for (Bucket* b : by_offset) {
    const int64_t chunk = b->size / group_size(*b);
    b->shard = shard;
    owned_.push_back({b->begin + group_rank(*b) * chunk, chunk});
    shard += chunk;
  }
  std::stable_sort(buckets_.begin(), buckets_.end(), [](const Bucket& a, const Bucket& b) {
    return a.ready > b.ready || (a.ready == b.ready && a.begin > b.begin);
  });
  shard_grads_.assign(size_t(shard), 0.0f);
  shard_params_.assign(size_t(shard), 0.0f);
  next_ = 0;
}

int64_t Parallel::local_batch(int64_t B) const {
  MOE_CHECK(B % world_size_ == 0, "parallel", "[train] batch = ", B,
            " sequences per micro-batch cannot be split evenly over ", world_size_,
            " ranks; use a multiple of ", world_size_, " (each rank reads batch / ranks)");
  return B / world_size_;
}

comm::Communicator* Parallel::group(const Bucket& b) const {
  return b.expert ? edp_comm_.get() : train_.get();
}

void Parallel::launch(Model& model, Bucket& b) {
  const int P = group_size(b);
  const float* g = model.grads().data() + b.begin;
  if (P == 1) {
    std::memcpy(shard_grads_.data() + b.shard, g, sizeof(float) * size_t(b.size));
    return;
  }
  comm::Compression z{comm::Wire(grad_wire_), nullptr};
  if (z.wire != comm::Wire::kAsIs && cfg_.error_feedback) {
    if (b.residual.size() != size_t(b.size)) b.residual.assign(size_t(b.size), 0.0f);
    // A skipped non-finite step must not poison every later one.
    for (float& e : b.residual)
      if (!std::isfinite(e)) {
        std::fill(b.residual.begin(), b.residual.end(), 0.0f);
        break;
      }
    z.residual = b.residual.data();
  }
  b.work = group(b)->reduce_scatter_async(g, shard_grads_.data() + b.shard, size_t(b.size / P),
                                          Dtype::kF32, comm::ReduceOp::kSum, z);
}

void Parallel::arm_overlap(Model& model) {
  if (!sharded() || !cfg_.overlap) return;
  next_ = 0;
  model.set_grad_ready_hook([this, &model](int64_t layer) {
    while (next_ < buckets_.size() && buckets_[next_].ready >= layer)
      launch(model, buckets_[next_++]);
  });
}

void Parallel::finish_grads(Model& model) {
  model.set_grad_ready_hook(nullptr);
  if (!sharded()) return;
  wait_params();  // the forward waited for every bucket already; this only clears the hook
  while (next_ < buckets_.size()) launch(model, buckets_[next_++]);
  next_ = 0;
  for (Bucket& b : buckets_) {
    if (!b.work) continue;
    const auto t0 = std::chrono::steady_clock::now();
    b.work->wait();
    times_.grad_wait += seconds_since(t0);
    b.work.reset();
  }
  // The sum over ranks of per-rank means -> the mean over the group's part of the global batch.
  scale_shard_grads(1.0f / float(group_ranks_));
}

float* Parallel::shard_grads() {
  return sharded() ? shard_grads_.data() : model_->grads().data();
}

int64_t Parallel::shard_numel() const {
  return sharded() ? int64_t(shard_grads_.size()) : int64_t(model_->grads().size());
}

void Parallel::scale_shard_grads(float k) {
  float* g = shard_grads();
  const int64_t n = shard_numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) g[i] *= k;
}

double Parallel::grad_norm_sq() {
  const float* g = shard_grads();
  const int64_t n = shard_numel();
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (int64_t i = 0; i < n; ++i) s += double(g[i]) * double(g[i]);
  if (sharded()) train_->all_reduce(&s, &s, 1, Dtype::kF64, comm::ReduceOp::kSum);
  return s;
}

void Parallel::gather_params(Model& model) {
  if (!sharded()) return;
  wait_params();
  const auto t0 = std::chrono::steady_clock::now();
  float* p = model.params().data();
  // Launched in the order forward reads them: the buckets of the first layers first.
  for (size_t i = buckets_.size(); i-- > 0;) {
    Bucket& b = buckets_[i];
    const int P = group_size(b);
    if (P == 1) continue;  // the optimizer updated the whole bucket in place
    const int64_t chunk = b.size / P;
    std::memcpy(shard_params_.data() + b.shard, p + b.begin + group_rank(b) * chunk,
                sizeof(float) * size_t(chunk));
    gathers_.push_back(group(b)->all_gather_async(shard_params_.data() + b.shard, p + b.begin,
                                                  size_t(chunk), Dtype::kF32));
    gather_ready_.push_back(b.ready);
  }
  gather_next_ = 0;
  times_.param_gather += seconds_since(t0);
  if (!cfg_.overlap) return wait_params();
  model.set_params_needed_hook([this](int64_t layer) {
    const auto t = std::chrono::steady_clock::now();
    while (gather_next_ < gathers_.size() && (gather_ready_[gather_next_] <= layer ||
                                              layer >= model_cfg_.num_hidden_layers))
      gathers_[gather_next_++]->wait();
    times_.param_gather += seconds_since(t);
  });
}

void Parallel::wait_params() {
  if (model_) model_->set_params_needed_hook(nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  for (; gather_next_ < gathers_.size(); ++gather_next_) gathers_[gather_next_]->wait();
  gathers_.clear();
  gather_ready_.clear();
  gather_next_ = 0;
  times_.param_gather += seconds_since(t0);
}

void Parallel::all_reduce_sum(double* v, size_t n) {
  if (distributed()) world_->all_reduce(v, v, n, Dtype::kF64, comm::ReduceOp::kSum);
}

void Parallel::all_reduce_max(double* v, size_t n) {
  if (distributed()) world_->all_reduce(v, v, n, Dtype::kF64, comm::ReduceOp::kMax);
}

void Parallel::all_reduce_sum(int64_t* v, size_t n) {
  if (distributed()) world_->all_reduce(v, v, n, Dtype::kI64, comm::ReduceOp::kSum);
}

void Parallel::reduce_load(Model& model) {
  if (!sharded()) return;
  std::vector<int64_t> flat;
  for (const auto& l : model.load()) flat.insert(flat.end(), l.begin(), l.end());
  if (flat.empty()) return;
  train_->all_reduce(flat.data(), flat.data(), flat.size(), Dtype::kI64, comm::ReduceOp::kSum);
  size_t at = 0;
  for (auto& l : model.load())
    for (auto& x : l) x = flat[at++];
}

void Parallel::check_same(const std::string& what, const std::string& text) {
  if (!distributed()) return;
  const int64_t mine = int64_t(fnv1a(text));
  std::vector<int64_t> all(static_cast<size_t>(world_size_));
  world_->all_gather(&mine, all.data(), 1, Dtype::kI64);
  for (int r = 1; r < world_size_; ++r)
    MOE_CHECK(all[r] == all[0], "parallel", "rank ", r, " runs ", what, " ", hex(uint64_t(all[r])),
              ", rank 0 runs ", hex(uint64_t(all[0])),
              "; start every rank with the same config file and command line");
}

FullTrainTensors Parallel::gather_full(const Model& model, const AdamW& opt) {
  wait_params();
  const ParamLayout full = make_layout(model.config());
  FullTrainTensors t;
  t.params.assign(size_t(full.total_numel), 0.0f);
  t.m.assign(size_t(full.total_numel), 0.0f);
  t.v.assign(size_t(full.total_numel), 0.0f);
  // Ownership partitions the model: every element comes from exactly one rank, the others add
  // zeros, so the sums below are exact. (An all-reduce is simple and fine at the model sizes
  // trained here; a gather to rank 0 would move 1/world of the bytes.)
  const float* p = model.params().data();
  for_each_piece(model.layout(), full, owned_, [&](int64_t a, int64_t s, int64_t f, int64_t n) {
    std::memcpy(t.params.data() + f, p + a, sizeof(float) * size_t(n));
    std::memcpy(t.m.data() + f, opt.m().data() + s, sizeof(float) * size_t(n));
    std::memcpy(t.v.data() + f, opt.v().data() + s, sizeof(float) * size_t(n));
  });
  if (sharded()) {
    for (std::vector<float>* v : {&t.params, &t.m, &t.v})
      train_->all_reduce(v->data(), v->data(), v->size(), Dtype::kF32, comm::ReduceOp::kSum);
    if (group_rank_ != 0) t = FullTrainTensors{};
  }
  return t;
}

std::vector<float> Parallel::gather_state(const std::vector<float>& packed) {
  const ParamLayout full = make_layout(model_cfg_);
  std::vector<float> out(size_t(full.total_numel), 0.0f);
  for_each_piece(model_->layout(), full, owned_, [&](int64_t, int64_t s, int64_t f, int64_t n) {
    std::memcpy(out.data() + f, packed.data() + s, sizeof(float) * size_t(n));
  });
  if (sharded()) {
    train_->all_reduce(out.data(), out.data(), out.size(), Dtype::kF32, comm::ReduceOp::kSum);
    if (group_rank_ != 0) out.clear();
  }
  return out;
}

void Parallel::load_state(const std::vector<float>& full, std::vector<float>& packed) const {
  MOE_CHECK(int64_t(full.size()) == make_layout(model_cfg_).total_numel, "parallel", "a state of ",
            full.size(), " values for a model of ", make_layout(model_cfg_).total_numel,
            " parameters");
  for_each_piece(model_->layout(), make_layout(model_cfg_), owned_,
                 [&](int64_t, int64_t s, int64_t f, int64_t n) {
                   std::memcpy(packed.data() + s, full.data() + f, sizeof(float) * size_t(n));
                 });
}

void Parallel::load_full(const FullTrainTensors& t, Model& model, AdamW& opt) const {
  const ParamLayout full = make_layout(model.config());
  MOE_CHECK(int64_t(t.params.size()) == full.total_numel &&
                int64_t(t.m.size()) == full.total_numel && int64_t(t.v.size()) == full.total_numel,
            "parallel", "checkpoint holds ", t.params.size(), " parameters, the model has ",
            full.total_numel);
  // Every parameter this rank holds (replicated and its experts), then its optimizer shard.
  std::unordered_map<std::string, int64_t> full_offset;
  for (const ParamSpec& s : full.specs) full_offset[s.name] = s.offset;
  for (const ParamSpec& s : model.layout().specs)
    std::memcpy(model.params().data() + s.offset, t.params.data() + full_offset.at(s.name),
                sizeof(float) * size_t(s.numel));
  for_each_piece(model.layout(), full, owned_, [&](int64_t, int64_t s, int64_t f, int64_t n) {
    std::memcpy(opt.m().data() + s, t.m.data() + f, sizeof(float) * size_t(n));
    std::memcpy(opt.v().data() + s, t.v.data() + f, sizeof(float) * size_t(n));
  });
}

CommTimes Parallel::take_comm_times() {
  CommTimes t = times_;
  if (dispatcher_) {
    t.dispatch = dispatcher_->seconds();
    dispatcher_->clear_seconds();
  }
  times_ = CommTimes{};
  return t;
}

Traffic Parallel::take_traffic() {
  Traffic t;
  if (!world_ || world_size_ == 1) return t;
  const comm::Communicator::Traffic now = world_->traffic();
  constexpr size_t K = size_t(comm::OpKind::kCount);
  std::vector<double> cur(2 * K);
  for (size_t k = 0; k < K; ++k) cur[k] = double(now.sent[k]), cur[K + k] = double(now.inter_host[k]);
  if (traffic_last_.empty()) traffic_last_.assign(2 * K, 0.0);
  auto delta = [&](size_t i) { return cur[i] - traffic_last_[i]; };
  for (size_t k = 0; k < K; ++k) {
    t.sent += delta(k);
    const double d = delta(K + k);
    t.inter_host += d;
    switch (comm::OpKind(k)) {
      case comm::OpKind::kReduceScatter: t.reduce_scatter += d; break;
      case comm::OpKind::kAllGather: t.all_gather += d; break;
      case comm::OpKind::kAllToAll:
      case comm::OpKind::kAllToAllv: t.all_to_all += d; break;
      case comm::OpKind::kAllReduce: t.all_reduce += d; break;
      default: t.other += d;
    }
  }
  traffic_last_ = cur;
  return t;
}

}  // namespace moe
