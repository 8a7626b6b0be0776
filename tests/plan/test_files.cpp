// Cluster TOML and model config.json reading: errors name the file, line, key and allowed
// values; every shipped file loads; shipped models match their published sizes.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "model/params.h"
#include "plan/cluster.h"
#include "plan/model_spec.h"

namespace moe::plan {
namespace {

const std::string kRoot = MOE_SOURCE_DIR;

const char* kGood = R"(name = "t"
[device]
peak_tflops_bf16 = 100
memory_gib = 16
memory_bandwidth_gbs = 1000
[node]
devices = 4
[network]
intra_bandwidth_gbs = 100
inter_bandwidth_gbs = 10
[efficiency]
gemm = 0.5
attention = 0.4
memory = 0.8
)";

std::string error_of(const std::string& text) {
  try {
    parse_cluster(text, "x.toml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PlanClusterFile, ParsesUnits) {
  const Cluster c = parse_cluster(kGood, "x.toml");
  EXPECT_DOUBLE_EQ(c.peak_bf16, 100e12);
  EXPECT_DOUBLE_EQ(c.peak_fp8, 0.0);
  EXPECT_DOUBLE_EQ(c.memory_bytes, 16.0 * 1024 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(c.inter_bandwidth, 10e9);
  EXPECT_EQ(c.devices_per_node, 4);
  EXPECT_DOUBLE_EQ(c.eff.grouped_gemm, 0.5);  // defaults to gemm
  EXPECT_DOUBLE_EQ(c.eff.optimizer, 0.8);     // defaults to memory
  // round trip through the writer
  const Cluster d = parse_cluster(cluster_to_toml(c, "# test\n"), "y.toml");
  EXPECT_DOUBLE_EQ(d.inter_bandwidth, c.inter_bandwidth);
  EXPECT_DOUBLE_EQ(d.eff.attention, c.eff.attention);
  EXPECT_DOUBLE_EQ(d.eff.optimizer, c.eff.optimizer);
  EXPECT_DOUBLE_EQ(parse_cluster(std::string(kGood) + "optimizer = 0.6\n", "z.toml").eff.optimizer,
                   0.6);
}

TEST(PlanClusterFile, UnknownKeyNamesFileLineKeyAndAllowed) {
  std::string t = kGood;
  t.replace(t.find("gemm = 0.5"), 10, "gem = 0.5");
  const std::string e = error_of(t);
  EXPECT_NE(e.find("x.toml:12"), std::string::npos) << e;
  EXPECT_NE(e.find("'gem'"), std::string::npos) << e;
  EXPECT_NE(e.find("grouped_gemm"), std::string::npos) << e;  // lists the allowed keys
}

TEST(PlanClusterFile, OutOfRangeAndWrongType) {
  std::string t = kGood;
  t.replace(t.find("memory = 0.8"), 12, "memory = 1.5");
  std::string e = error_of(t);
  EXPECT_NE(e.find("x.toml:14"), std::string::npos) << e;
  EXPECT_NE(e.find("(0, 1]"), std::string::npos) << e;
  t = kGood;
  t.replace(t.find("devices = 4"), 11, "devices = \"eight\"");
  e = error_of(t);
  EXPECT_NE(e.find("x.toml:7"), std::string::npos) << e;
  EXPECT_NE(e.find("integer >= 1"), std::string::npos) << e;
}

TEST(PlanClusterFile, MissingKeyAndSyntaxError) {
  std::string t = kGood;
  t.replace(t.find("memory_gib = 16\n"), 16, "");
  std::string e = error_of(t);
  EXPECT_NE(e.find("missing key 'memory_gib'"), std::string::npos) << e;
  e = error_of("[device\npeak = 1\n");
  EXPECT_NE(e.find("x.toml:1"), std::string::npos) << e;
  e = error_of(std::string(kGood) + "[gpu]\nx = 1\n");
  EXPECT_NE(e.find("unknown section [gpu]"), std::string::npos) << e;
}

TEST(PlanClusterFile, GroupedGemmCurveReadsInterpolatesAndRoundTrips) {
  const std::string t = std::string(kGood) +
                        "grouped_gemm_rows = [16, 64, 1024]\n"
                        "grouped_gemm_curve = [0.2, 0.4, 0.8]\n";
  const Cluster c = parse_cluster(t, "x.toml");
  ASSERT_EQ(c.eff.grouped_gemm_rows.size(), 3u);
  EXPECT_DOUBLE_EQ(c.eff.grouped_at(16), 0.2);
  EXPECT_DOUBLE_EQ(c.eff.grouped_at(4), 0.2);      // held below the first point
  EXPECT_DOUBLE_EQ(c.eff.grouped_at(1e6), 0.8);    // and above the last
  EXPECT_NEAR(c.eff.grouped_at(32), 0.3, 1e-12);   // halfway in log rows from 16 to 64
  EXPECT_NEAR(c.eff.grouped_at(256), 0.6, 1e-12);  // halfway from 64 to 1024
  const Cluster d = parse_cluster(cluster_to_toml(c, "# test\n"), "y.toml");
  EXPECT_EQ(d.eff.grouped_gemm_rows, c.eff.grouped_gemm_rows);
  EXPECT_EQ(d.eff.grouped_gemm_curve, c.eff.grouped_gemm_curve);
  // Without a curve the single efficiency holds at every size.
  EXPECT_DOUBLE_EQ(parse_cluster(kGood, "x.toml").eff.grouped_at(16), 0.5);
}

TEST(PlanClusterFile, GroupedGemmCurveErrors) {
  std::string e = error_of(std::string(kGood) + "grouped_gemm_rows = [16, 64]\n" +
                           "grouped_gemm_curve = [0.2]\n");
  EXPECT_NE(e.find("grouped_gemm_rows has 2 entries but grouped_gemm_curve has 1"),
            std::string::npos)
      << e;
  e = error_of(std::string(kGood) + "grouped_gemm_rows = [64, 16]\n" +
               "grouped_gemm_curve = [0.2, 0.3]\n");
  EXPECT_NE(e.find("strictly ascending"), std::string::npos) << e;
  e = error_of(std::string(kGood) + "grouped_gemm_rows = [16]\n" +
               "grouped_gemm_curve = [1.5]\n");
  EXPECT_NE(e.find("x.toml:16"), std::string::npos) << e;
  EXPECT_NE(e.find("(0, 1]"), std::string::npos) << e;
  e = error_of(std::string(kGood) + "grouped_gemm_rows = 16\n");
  EXPECT_NE(e.find("must be an array"), std::string::npos) << e;
}

TEST(PlanClusterFile, ShippedClustersLoad) {
  for (const char* f : {"h800.toml", "h100.toml", "ascend_910b.toml"}) {
    const Cluster c = load_cluster(kRoot + "/configs/clusters/" + f);
    EXPECT_EQ(c.devices_per_node, 8) << f;
    EXPECT_GT(c.peak_bf16, 1e14) << f;
  }
  EXPECT_DOUBLE_EQ(load_cluster(kRoot + "/configs/clusters/ascend_910b.toml").peak_fp8, 0.0);
}

TEST(PlanModelFile, PlanObjectIsReadAndChecked) {
  const std::string base = R"({"model_type": "moe_cpp", "hidden_size": 64,
    "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "attention": "mla",
    "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16)";
  const PlanModel m =
      parse_plan_model(base + R"(, "plan": {"name": "M", "notes": "n"}})", "m.json");
  EXPECT_EQ(m.cfg.n_group, 4);
  EXPECT_TRUE(m.mla());
  EXPECT_EQ(m.cfg.hidden_size, 64);
  EXPECT_EQ(m.x.name, "M");
  EXPECT_THROW(parse_plan_model(base + R"(, "plan": {"ngroup": 4}})", "m.json"), Error);
  EXPECT_THROW(parse_plan_model(base + R"(, "plan": {"name": 3}})", "m.json"), Error);
  EXPECT_THROW(parse_plan_model(base + R"(, "hiden_size": 3})", "m.json"), Error);
  EXPECT_THROW(parse_plan_model(base + R"(, "n_group": 3})", "m.json"), Error);
  // The model keys that used to live under "plan" say where they went.
  try {
    parse_plan_model(base + R"(, "plan": {"kv_lora_rank": 512}})", "m.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("move it to the top level"), std::string::npos)
        << e.what();
  }
}

// Published sizes: DeepSeek-V3 671B total + 14B MTP module = 685B, 37B activated
// (arXiv 2412.19437, sec. 1 and 4.2); Mixtral 8x7B 47B total, 13B active (arXiv 2401.04088,
// sec. 2); Kimi K2 1.04T total, 32.6B active (arXiv 2507.20534).
TEST(PlanModelFile, ShippedModelsMatchPublishedSizes) {
  const std::string dir = kRoot + "/configs/models/";
  ParamCounts p = count_params(load_plan_model(dir + "deepseek_v3.json"));
  EXPECT_NEAR(p.total / 1e9, 685, 685 * 0.01);
  EXPECT_NEAR(p.active / 1e9, 37 + 1.5, 1.5);  // + the MTP block's active share
  p = count_params(load_plan_model(dir + "mixtral_8x7b.json"));
  EXPECT_NEAR(p.total / 1e9, 46.7, 0.5);
  EXPECT_NEAR(p.active / 1e9, 12.9, 0.5);
  p = count_params(load_plan_model(dir + "moe_1t.json"));
  EXPECT_NEAR(p.total / 1e12, 1.04, 0.02);
  EXPECT_NEAR(p.active / 1e9, 32.6, 1.0);
  // TeleChat3-105B-A4.7B: 102.3B + 2.3B MTP = 104.6B ("105B"); 4.34B active + the 0.34B
  // embedding = 4.68B ("A4.7B"); exact counts in tests/integration/test_info.cpp.
  const PlanModel t = load_plan_model(dir + "telechat3_105b.json");
  EXPECT_EQ(t.cfg.n_routed_experts, 192);
  EXPECT_EQ(t.cfg.num_experts_per_tok, 4);
  EXPECT_EQ(t.cfg.n_shared_experts, 1);
  EXPECT_TRUE(t.mla());
  EXPECT_EQ(t.mtp_modules(), 1);
  EXPECT_NEAR(count_params(t).total / 1e9, 104.6, 0.1);
  // The same numbers moe info prints (model/flops.h): plan adds only the untrained biases.
  const moe::ParamCounts e = moe::count_params(t.cfg);
  EXPECT_EQ(count_params(t).active, e.active);
  EXPECT_EQ(count_params(t).total, e.total + (44 + 1) * 192);
  EXPECT_EQ(count_params(t).expert, e.routed_experts);
  // The planner's total is the layout's floats (balancing biases included).
  const PlanModel tiny = parse_plan_model(R"({"attention": "mla", "q_lora_rank": 24,
      "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12,
      "hidden_size": 64, "num_nextn_predict_layers": 2})",
                                          "t.json");
  EXPECT_EQ(count_params(tiny).total, make_layout(tiny.cfg).total_numel);
}

}  // namespace
}  // namespace moe::plan
