// Model::moe_stats(): per-MoE-layer routing statistics of the last forward pass, read-only.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

namespace moe {
namespace {

ModelConfig config(const std::string& scoring, double capacity_factor) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.intermediate_size = 48;
  c.moe_intermediate_size = 16;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.scoring_func = scoring;
  c.capacity_factor = capacity_factor;
  c.max_position_embeddings = 16;
  return c;
}

std::vector<int32_t> tokens(int64_t B, int64_t T) {
  std::vector<int32_t> t(size_t(B * (T + 1)));
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t((i * 37 + 11) % 256);
  return t;
}

TEST(MoeStats, OneEntryPerMoeLayerWithLoadSummingToSlots) {
  Model m(config("softmax", 0));
  m.init_weights(3);
  EXPECT_TRUE(m.moe_stats().empty()) << "no forward pass yet";
  const int64_t B = 3, T = 16;
  const auto tok = tokens(B, T);
  const LossStats ls = m.forward(tok.data(), B, T);
  const auto& st = m.moe_stats();
  ASSERT_EQ(st.size(), 2u);  // layers 1 and 2
  for (size_t i = 0; i < st.size(); ++i) {
    EXPECT_EQ(st[i].layer, int64_t(i) + 1);
    EXPECT_EQ(st[i].tokens, B * T);
    EXPECT_EQ(st[i].slots, B * T * 2);
    ASSERT_EQ(st[i].load.size(), 8u);
    EXPECT_EQ(std::accumulate(st[i].load.begin(), st[i].load.end(), int64_t(0)), B * T * 2);
    EXPECT_EQ(st[i].dropped, 0) << "dropless routing drops nothing";
    EXPECT_EQ(st[i].dropped_frac(), 0.0);
    // Random init: the router is almost uniform, so the entropy is just under ln E.
    EXPECT_GT(st[i].router_entropy(), 0.9 * std::log(8.0));
    EXPECT_LE(st[i].router_entropy(), std::log(8.0) + 1e-9);
  }
  EXPECT_EQ(ls.dropped, 0);
  // A second, smaller pass replaces (not adds to) the statistics.
  m.forward(tok.data(), 1, T);
  EXPECT_EQ(m.moe_stats()[0].tokens, T);
}

// The entropy is of the normalized score distribution, not of the load: with a zero router
// every token's scores are equal (entropy ln E) while top-k ties always pick the same K
// experts (load entropy ln K).
TEST(MoeStats, EntropyIsOfTheScoresNotOfTheLoad) {
  for (const char* scoring : {"softmax", "sigmoid"}) {
    Model m(config(scoring, 0));
    m.init_weights(5);
    for (int64_t l = 1; l < 3; ++l) {
      const MoeWeights w = m.moe_weights(l);
      float* router = m.params().data() + (w.router - m.params().data());
      std::fill(router, router + 8 * 32, 0.0f);
    }
    const auto tok = tokens(2, 16);
    m.forward(tok.data(), 2, 16);
    for (const auto& s : m.moe_stats()) {
      EXPECT_NEAR(s.router_entropy(), std::log(8.0), 1e-9) << scoring;
      int used = 0;
      for (int64_t v : s.load) used += v > 0;
      EXPECT_EQ(used, 2) << scoring << ": ties should all go to the same two experts";
    }
  }
}

// A peaked router gives a low entropy: scale one router row so that its expert dominates.
TEST(MoeStats, PeakedRouterHasLowEntropy) {
  Model m(config("softmax", 0));
  m.init_weights(9);
  for (int64_t l = 1; l < 3; ++l) {
    const MoeWeights w = m.moe_weights(l);
    float* router = m.params().data() + (w.router - m.params().data());
    for (int64_t j = 0; j < 8 * 32; ++j) router[j] *= 400.0f;  // sharpen every score
  }
  const auto tok = tokens(2, 16);
  m.forward(tok.data(), 2, 16);
  for (const auto& s : m.moe_stats()) EXPECT_LT(s.router_entropy(), 0.5 * std::log(8.0));
}

TEST(MoeStats, CapacityDropsArePerLayerAndMatchTheLoss) {
  Model m(config("softmax", 0.5));
  m.init_weights(11);
  const auto tok = tokens(4, 16);
  const LossStats ls = m.forward_backward(tok.data(), 4, 16);
  int64_t dropped = 0;
  for (const auto& s : m.moe_stats()) {
    // capacity ceil(0.5 * 64 * 2 / 8) = 8 of 128 slots per expert: at least half are dropped.
    EXPECT_GE(s.dropped, 64) << "layer " << s.layer;
    // Expert e keeps its first 8 slots: exactly its excess over 8 is dropped.
    int64_t excess = 0;
    for (int64_t v : s.load) excess += std::max<int64_t>(0, v - 8);
    EXPECT_EQ(s.dropped, excess) << "layer " << s.layer;
    EXPECT_DOUBLE_EQ(s.dropped_frac(), double(s.dropped) / double(s.slots));
    dropped += s.dropped;
  }
  EXPECT_EQ(dropped, ls.dropped);
}

}  // namespace
}  // namespace moe
