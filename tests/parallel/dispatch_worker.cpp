// One rank of the expert-parallel edge-case tests (tests/integration/test_parallel.cpp starts
// it under moe launch).
// Every rank is one EP rank of one group of `world` ranks holding 2 experts each. Prints
// "dispatch_worker rank R: ok" or the first thing that was wrong, and exits non-zero then.
//
//   round-trip   every rank fills its rows with its rank id and sends a different number of
//                rows to each expert (some none): the experts see exactly the senders' ids in
//                expert-major order, and dispatch then combine returns every row bit for bit
//   zero-tokens  the router's balancing bias sends every token to experts 0 and 1 (rank 0's):
//                the other ranks' experts get no row, and forward + backward on EP ranks gives
//                the loss and expert gradients that one process computes on the global batch
//   node-limited with several hosts (MOE_HOST_ID): n_group = hosts, topk_group = 1, top-3 of
//                2 experts per rank: every token's experts are on one host
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"
#include "model/model.h"
#include "parallel/expert_dispatcher.h"
#include "parallel/parallel.h"

namespace {

using namespace moe;

std::string failure;  // first failure of this rank
void check(bool ok, const std::string& what) {
  if (!ok && failure.empty()) failure = what;
}

void round_trip(const std::shared_ptr<comm::Communicator>& world) {
  const int n = world->size(), r = world->rank();
  const int64_t E = 2 * n, D = 5;
  ExpertDispatcher d(world, world, E);
  // Rank r sends (r + e) % 3 rows to expert e: 0, 1 or 2 rows, so some pairs exchange none.
  std::vector<int64_t> count(static_cast<size_t>(E));
  int64_t M = 0;
  for (int64_t e = 0; e < E; ++e) M += count[size_t(e)] = (r + e) % 3;
  std::vector<float> sorted(size_t(std::max<int64_t>(M, 1) * D), float(r));
  ExpertExchange ex;
  d.plan(ex, count.data(), E);
  std::vector<float> local, back;
  const float* rows = d.dispatch(ex, sorted.data(), D, local);
  // Expert-major: for local expert j, rank 0's rows, then rank 1's, ...
  int64_t at = 0;
  for (int64_t j = 0; j < 2; ++j)
    for (int s = 0; s < n; ++s) {
      const int64_t want = (s + (2 * r + j)) % 3;
      check(ex.recv_counts[size_t(s * 2 + j)] == want, "expert " + std::to_string(2 * r + j) +
                                                           " expected " + std::to_string(want) +
                                                           " rows from rank " + std::to_string(s));
      for (int64_t i = 0; i < want * D; ++i, ++at)
        check(rows[at] == float(s),
              "a row from rank " + std::to_string(s) + " holds " + std::to_string(rows[at]));
    }
  check(at == ex.local_rows() * D, "local rows " + std::to_string(ex.local_rows()));
  const float* home = d.combine(ex, rows, D, back);
  check(M == 0 || std::memcmp(home, sorted.data(), sizeof(float) * size_t(M * D)) == 0,
        "dispatch then combine changed the rows");
}

// A small MoE model whose routing sends every token to experts 0 and 1.
ModelConfig zero_token_config(int64_t E) {
  ModelConfig c;
  c.vocab_size = 64, c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 2;
  c.num_key_value_heads = 2, c.head_dim = 16, c.intermediate_size = 48;
  c.moe_intermediate_size = 16, c.n_routed_experts = E, c.num_experts_per_tok = 2;
  c.n_shared_experts = 1, c.first_k_dense_replace = 1, c.scoring_func = "sigmoid";
  c.norm_topk_prob = true, c.max_position_embeddings = 16, c.aux_loss_alpha = 0.01;
  return c;
}

void zero_tokens(const std::shared_ptr<comm::Communicator>& world) {
  const int n = world->size(), r = world->rank();
  const ModelConfig cfg = zero_token_config(2 * n);
  const int64_t B = 2 * n, T = 8;
  std::vector<int32_t> tokens(size_t(B * (T + 1)));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7 + 3) % 64);
  auto force = [&](Model& m) {  // bias +10 on experts 0 and 1: sigmoid scores are below 1
    const auto& o = m.layout().layers[1];
    m.params()[size_t(o.bias)] = 10, m.params()[size_t(o.bias + 1)] = 10;
  };
  // One process on the global batch, on every rank.
  Model ref(cfg);
  ref.init_weights(5);
  force(ref);
  const LossStats want = ref.forward_backward(tokens.data(), B, T);
  // Expert parallel: each rank holds 2 experts and trains on 2 sequences.
  ParallelConfig pc;
  pc.ep = n;
  Parallel par(world, pc, cfg);
  Model ep(cfg, par.layout_options());
  ep.init_weights(5);
  force(ep);
  par.attach(ep);
  const LossStats got = ep.forward_backward(tokens.data() + 2 * r * (T + 1), 2, T);
  double loss = got.loss;
  par.all_reduce_sum(&loss, 1);
  loss /= n;
  check(std::abs(loss - want.loss) <= 1e-5 * std::abs(want.loss),
        "loss " + std::to_string(loss) + " vs one process " + std::to_string(want.loss));
  check(ep.moe_stats().size() == 1, "one MoE layer");
  // This rank's experts: zero gradient where they got no token, else the one-process gradient
  // (each rank's rows carry 1/(its tokens): the sum over ranks is n times the global mean).
  const ParamLayout& full = ref.layout();
  for (const ParamSpec& s : ep.layout().specs) {
    if (s.expert < 0) continue;
    const ParamSpec* f = full.find(s.name);
    double worst = 0, norm = 0;
    for (int64_t i = 0; i < s.numel; ++i) {
      const double g = double(ep.grads()[size_t(s.offset + i)]) / n;
      const double w = ref.grads()[size_t(f->offset + i)];
      worst = std::max(worst, std::abs(g - w)), norm = std::max(norm, std::abs(w));
    }
    check(worst <= 1e-6 + 1e-4 * norm, s.name + " gradient differs by " + std::to_string(worst));
    if (s.expert >= 2) check(norm == 0, s.name + " got tokens");
  }
  // The layer's loads: experts 0 and 1 took every token, counted once over the job.
  std::vector<int64_t> load = ep.load()[1];
  par.all_reduce_sum(load.data(), load.size());
  check(load[0] == B * T && load[1] == B * T, "experts 0 and 1 did not take every token");
  for (size_t e = 2; e < load.size(); ++e) check(load[e] == 0, "expert " + std::to_string(e));
}

// Node-limited routing (n_group = the hosts of the EP group, topk_group = 1; expert
// parallel over every rank): every token's experts, as routed in a real forward, lie on the
// experts of one host, and the job's tokens do use both hosts. Skipped on one host.
void node_limited(const std::shared_ptr<comm::Communicator>& world) {
  const int n = world->size(), r = world->rank(), H = world->num_hosts();
  if (H < 2) return;
  ModelConfig cfg = zero_token_config(2 * n);
  cfg.num_experts_per_tok = 3, cfg.n_group = H, cfg.topk_group = 1;
  cfg.aux_loss_alpha = 0;
  const int64_t B = 2 * n, T = 8;
  std::vector<int32_t> tokens(size_t(B * (T + 1)));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 13 + 5) % 64);
  ParallelConfig pc;
  pc.ep = n;
  Parallel par(world, pc, cfg);
  Model ep(cfg, par.layout_options());
  ep.init_weights(9);
  par.attach(ep);
  ep.forward(tokens.data() + 2 * r * (T + 1), 2, T);
  // Expert e lives on EP rank e / 2, which is world rank e / 2 here.
  const std::vector<int32_t>& sel = ep.routed_experts(1);
  check(sel.size() >= size_t(2 * T * 3), "routed experts of layer 1: " + std::to_string(sel.size()));
  std::vector<int64_t> per_host(size_t(H), 0);
  for (size_t t = 0; t < size_t(2 * T) && t * 3 < sel.size(); ++t) {
    std::vector<int> hosts;
    for (int k = 0; k < 3; ++k) {
      const int h = world->host_of()[size_t(sel[t * 3 + k] / 2)];
      if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
    }
    check(hosts.size() == 1, "token " + std::to_string(t) + " of rank " + std::to_string(r) +
                                 " reaches " + std::to_string(hosts.size()) + " hosts");
    ++per_host[size_t(hosts[0])];
  }
  par.all_reduce_sum(per_host.data(), per_host.size());
  for (int h = 0; h < H; ++h)
    check(per_host[size_t(h)] > 0, "no token chose host " + std::to_string(h) + "'s experts");
  if (r == 0)
    std::printf("node_limited: tokens per host %lld, %lld\n", static_cast<long long>(per_host[0]),
                static_cast<long long>(per_host[1]));
}

}  // namespace

int main() {
  try {
    auto world = comm::Communicator::from_env();
    round_trip(world);
    zero_tokens(world);
    node_limited(world);
    std::printf("dispatch_worker rank %d: %s\n", world->rank(),
                failure.empty() ? "ok" : ("FAIL " + failure).c_str());
    return failure.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dispatch_worker: %s\n", e.what());
    return 2;
  }
}
