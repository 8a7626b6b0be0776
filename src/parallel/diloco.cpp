#include "parallel/diloco.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "comm/communicator.h"
#include "core/error.h"
#include "core/safetensors.h"

namespace moe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string group_key(int64_t g, const char* what) {
  return "group" + std::to_string(g) + "." + what;
}

}  // namespace

void outer_nesterov_step(float* theta, float* momentum, const float* delta, int64_t n, float lr,
                         float mu) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float m = mu * momentum[i] + delta[i];  // buf.mul_(mu).add_(delta)
    momentum[i] = m;
    theta[i] -= lr * (delta[i] + mu * m);  // delta.add(buf, alpha=mu); p.add_(., alpha=-lr)
  }
}

DiLoCo::DiLoCo(Parallel& par) : par_(par) {
  const ParallelConfig& c = par.config();
  MOE_CHECK(par.diloco(), "diloco", "[parallel] mode = \"", c.mode, "\", not \"diloco\"");
  H_ = c.inner_steps;
  lr_ = float(c.outer_lr);
  mu_ = float(c.outer_momentum);
  int8_ = c.outer_comm_dtype == "int8";
  int64_t n = 0;
  for (const ArenaRange& r : par.owned()) n += r.numel;
  MOE_CHECK(n > 0, "diloco", "attach the model to the Parallel before making the DiLoCo");
  theta_.assign(size_t(n), 0.0f);
  momentum_.assign(size_t(n), 0.0f);
  delta_.assign(size_t(n), 0.0f);
  if (const char* d = std::getenv("MOE_TEST_DILOCO_DUMP")) dump_dir_ = d;
}

void DiLoCo::pack(const float* params, std::vector<float>& out) const {
  int64_t at = 0;
  for (const ArenaRange& r : par_.owned()) {
    std::memcpy(out.data() + at, params + r.offset, sizeof(float) * size_t(r.numel));
    at += r.numel;
  }
}

void DiLoCo::reset(const Model& model) {
  pack(model.params().data(), theta_);
  averaged_.clear();
  int64_t at = 0;
  for (const ArenaRange& r : par_.owned()) {
    for (const ParamSpec& s : model.layout().specs) {
      if (s.name.find("e_score_correction_bias") == std::string::npos) continue;
      const int64_t a = std::max(s.offset, r.offset);
      const int64_t b = std::min(s.offset + s.numel, r.offset + r.numel);
      if (a < b) averaged_.emplace_back(at + (a - r.offset), at + (b - r.offset));
    }
    at += r.numel;
  }
}

void DiLoCo::dump(const std::string& path,
                  const std::vector<std::pair<std::string, const std::vector<float>*>>& t) {
  std::vector<std::vector<float>> full;
  for (const auto& [name, packed] : t) full.push_back(par_.gather_state(*packed));
  if (par_.group_rank() != 0) return;
  std::vector<TensorRef> refs;
  for (size_t i = 0; i < t.size(); ++i)
    refs.push_back({t[i].first, "F32", {int64_t(full[i].size())}, full[i].data()});
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  write_safetensors(path, refs);
}

OuterSyncStats DiLoCo::sync(Model& model, int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  OuterSyncStats st;
  float* p = model.params().data();
  const int64_t n = int64_t(theta_.size());
  const int G = par_.groups();
  // Test hook: each sync's inputs and outputs in the full layout, one file per group.
  std::vector<float> local, theta_before, momentum_before;
  if (!dump_dir_.empty()) {
    local.resize(size_t(n));
    pack(p, local);
    theta_before = theta_, momentum_before = momentum_;
  }

  // The pseudo-gradient of this group, then its mean over the groups.
  pack(p, delta_);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) delta_[i] = theta_[i] - delta_[i];
  if (G > 1) {
    comm::Communicator& x = *par_.cross_group();
    comm::Compression z;
    z.wire = int8_ ? comm::Wire::kInt8 : comm::Wire::kAsIs;
    const auto tc = std::chrono::steady_clock::now();
    const comm::Communicator::Traffic before = x.traffic();
    x.all_reduce(delta_.data(), delta_.data(), size_t(n), Dtype::kF32, comm::ReduceOp::kSum, z);
    const comm::Communicator::Traffic after = x.traffic();
    st.comm_seconds = seconds_since(tc);
    const size_t k = size_t(comm::OpKind::kAllReduce);
    st.sent_bytes = int64_t(after.sent[k] - before.sent[k]);
    st.inter_host_bytes = int64_t(after.inter_host[k] - before.inter_host[k]);
    st.bytes = n * int64_t(sizeof(float));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) delta_[i] /= float(G);
  }

  std::vector<float> kept;  // the balancing biases' theta_global, before the outer step
  for (const auto& [b, e] : averaged_) kept.insert(kept.end(), theta_.begin() + b, theta_.begin() + e);
  outer_nesterov_step(theta_.data(), momentum_.data(), delta_.data(), n, lr_, mu_);
  size_t k = 0;
  for (const auto& [b, e] : averaged_)  // the mean of the groups' biases, no momentum
    for (int64_t i = b; i < e; ++i) theta_[i] = kept[k++] - delta_[i], momentum_[i] = 0;

  // Every group continues from theta_global (this rank's shard; the all-gather follows).
  int64_t at = 0;
  for (const ArenaRange& r : par_.owned()) {
    std::memcpy(p + r.offset, theta_.data() + at, sizeof(float) * size_t(r.numel));
    at += r.numel;
  }
  double dsq = 0, usq = 0;  // |delta|^2 and |theta_global's change|^2 over this rank's shard
#pragma omp parallel for reduction(+ : dsq, usq) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double d = delta_[i], u = double(lr_) * double(delta_[i] + mu_ * momentum_[i]);
    dsq += d * d;
    usq += u * u;
  }

  if (!dump_dir_.empty()) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08lld_group%d.safetensors",
                  static_cast<long long>(step), par_.group_index());
    dump((std::filesystem::path(dump_dir_) / name).string(), {{"local", &local},
                                                              {"theta_before", &theta_before},
                                                              {"momentum_before", &momentum_before},
                                                              {"theta_after", &theta_},
                                                              {"momentum_after", &momentum_}});
  }

  // Every group's shards partition the model and every group holds the same values: the sums
  // over the job are the groups' count times the model's.
  double sq[2] = {dsq, usq};
  par_.all_reduce_sum(sq, 2);
  st.delta_norm = std::sqrt(sq[0] / G);
  st.update_norm = std::sqrt(sq[1] / G);
  double t[4] = {seconds_since(t0), st.comm_seconds, double(st.sent_bytes),
                 double(st.inter_host_bytes)};
  par_.all_reduce_max(t, 4);
  st.seconds = t[0], st.comm_seconds = t[1];
  st.sent_bytes = int64_t(t[2]), st.inter_host_bytes = int64_t(t[3]);
  return st;
}

DilocoCheckpoint DiLoCo::checkpoint_state(const FullTrainTensors& full) {
  DilocoCheckpoint ck;
  const int G = par_.groups();
  const ParallelConfig& c = par_.config();
  // The outer momentum is the same in every group: group 0 gathers it to rank 0.
  if (par_.group_index() == 0) {
    std::vector<float> m = par_.gather_state(momentum_);
    if (par_.rank() == 0) ck.momentum = std::move(m);
  }
  // Each group's rank 0 holds its group's moments; they are the ranks of one cross-group
  // communicator (its rank g = group g), and send them to rank 0.
  if (G > 1 && par_.group_rank() == 0) {
    comm::Communicator& x = *par_.cross_group();
    if (par_.rank() == 0) {
      const size_t n = full.m.size();
      ck.group_m.assign(size_t(G - 1), std::vector<float>(n));
      ck.group_v.assign(size_t(G - 1), std::vector<float>(n));
      for (int g = 1; g < G; ++g) {
        x.recv(ck.group_m[size_t(g - 1)].data(), n, Dtype::kF32, g);
        x.recv(ck.group_v[size_t(g - 1)].data(), n, Dtype::kF32, g);
      }
    } else {
      x.send(full.m.data(), full.m.size(), Dtype::kF32, 0);
      x.send(full.v.data(), full.v.size(), Dtype::kF32, 0);
    }
  }
  ck.metadata = {{"groups", std::to_string(G)},
                 {"group_ranks", std::to_string(par_.group_ranks())},
                 {"inner_steps", std::to_string(c.inner_steps)},
                 {"outer_lr", std::to_string(c.outer_lr)},
                 {"outer_momentum", std::to_string(c.outer_momentum)}};
  return ck;
}

std::vector<TensorRef> DilocoCheckpoint::tensors() const {
  std::vector<TensorRef> t = {
      {"outer_momentum", "F32", {int64_t(momentum.size())}, momentum.data()}};
  for (size_t i = 0; i < group_m.size(); ++i) {
    const int64_t g = int64_t(i) + 1;
    t.push_back({group_key(g, "exp_avg"), "F32", {int64_t(group_m[i].size())}, group_m[i].data()});
    t.push_back(
        {group_key(g, "exp_avg_sq"), "F32", {int64_t(group_v[i].size())}, group_v[i].data()});
  }
  return t;
}

std::string DiLoCo::load(const std::string& dir, FullTrainTensors& full) {
  const std::filesystem::path path = std::filesystem::path(dir) / kFile;
  std::fill(momentum_.begin(), momentum_.end(), 0.0f);
  if (!std::filesystem::exists(path))
    return "a checkpoint without DiLoCo state (a sync run's): the outer momentum starts at zero "
           "and every group from its AdamW moments";
  const SafetensorsFile f = read_safetensors(path.string());
  const int G = par_.groups();
  const auto it = f.metadata.find("groups");
  const int saved = it == f.metadata.end() ? -1 : std::atoi(it->second.c_str());
  MOE_CHECK(saved == G, "diloco", path.string(), " holds the inner AdamW moments of ", saved,
            " DiLoCo groups but this job has ", G, " (", par_.world_size(),
            " ranks, [parallel] diloco_group = ", par_.group_ranks(),
            "); resume with as many groups, or start a new run folder");
  par_.load_state(f.at("outer_momentum").as_f32("outer_momentum"), momentum_);
  const int g = par_.group_index();
  if (g > 0) {
    full.m = f.at(group_key(g, "exp_avg")).as_f32(group_key(g, "exp_avg"));
    full.v = f.at(group_key(g, "exp_avg_sq")).as_f32(group_key(g, "exp_avg_sq"));
  }
  return "DiLoCo outer momentum and the AdamW moments of " + std::to_string(G) + " groups";
}

}  // namespace moe
