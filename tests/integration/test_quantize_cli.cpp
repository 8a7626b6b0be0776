// `moe quantize` and the --dtype of `moe generate` / `moe eval`: the exported folders load back,
// int8 generation gives the same text from an int8 folder as from on-the-fly quantization,
// and bad input is one clear error line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/checkpoint.h"
#include "model/model.h"
#include "run_binary.h"
#include "tiny_model.h"

namespace moe {
namespace {

using moe::testing::run_command;
using moe::testing::run_moe;
namespace fs = std::filesystem;

class QuantizeCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moe_quantize_cli_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    Model m(moe::testing::tiny_moe(256, 64));
    m.init_weights(11);
    ck_ = (dir_ / "fp32").string();
    save_checkpoint(ck_, m.config(), m.layout(), m.params().data());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string slurp(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // stdout alone (stderr dropped).
  static std::string stdout_of(const std::string& args) {
    const auto [code, out] =
        run_command("(" + std::string(MOE_BINARY) + " " + args + " 2>/dev/null)");
    EXPECT_EQ(code, 0) << args << "\n" << out;
    return out;
  }
  void expect_error(const std::string& args, const std::string& needle) {
    const auto [code, out] = run_moe(args);
    EXPECT_EQ(code, 1) << args;
    EXPECT_NE(out.find(needle), std::string::npos) << "output lacks '" << needle << "':\n" << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "not one line:\n" << out;
  }

  fs::path dir_;
  std::string ck_;
};

TEST_F(QuantizeCli, Int8ExportGeneratesLikeOnTheFlyQuantization) {
  std::ofstream(path("fp32/tokenizer.json")) << "{}";  // copied as bytes by quantize
  auto [code, out] = run_moe("quantize --checkpoint " + ck_ + " --out " + path("int8"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("-> " + path("int8") + " (int8"), std::string::npos) << out;
  EXPECT_NE(out.find("tokenizer.json copied"), std::string::npos) << out;
  EXPECT_EQ(slurp(path("int8/tokenizer.json")), "{}");
  fs::remove(path("fp32/tokenizer.json"));
  fs::remove(path("int8/tokenizer.json"));
  const auto cfg = nlohmann::json::parse(slurp(path("int8/config.json")));
  EXPECT_EQ(cfg.at("quantization_config").at("quant_method"), kInt8QuantMethod);
  EXPECT_LT(fs::file_size(path("int8/model.safetensors")),
            fs::file_size(ck_ + "/model.safetensors") / 2);

  const std::string gen = " --prompt 'the ' --temperature 0 --max-new-tokens 40";
  std::tie(code, out) = run_moe("generate --checkpoint " + path("int8") + gen);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("precision: int8 ("), std::string::npos) << out;
  EXPECT_NE(out.find("as stored"), std::string::npos) << out;
  EXPECT_NE(out.find("40 new tokens"), std::string::npos) << out;
  EXPECT_NE(out.find(" tokens/s"), std::string::npos) << out;

  const std::string stored = stdout_of("generate --checkpoint " + path("int8") + gen);
  const std::string on_the_fly = stdout_of("generate --checkpoint " + ck_ + " --dtype int8" + gen);
  EXPECT_EQ(stored, on_the_fly);
  EXPECT_EQ(stored.rfind("the ", 0), 0u) << stored;
  // --dtype fp32 on the int8 folder runs the dequantized weights in fp32.
  std::tie(code, out) = run_moe("generate --checkpoint " + path("int8") + " --dtype fp32" + gen);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("precision: fp32 (the int8 checkpoint's weights dequantized"),
            std::string::npos)
      << out;
}

TEST_F(QuantizeCli, Bf16ExportLoadsBack) {
  auto [code, out] =
      run_moe("quantize --checkpoint " + ck_ + " --out " + path("bf16") + " --dtype bf16");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(slurp(path("bf16/config.json"))).at("torch_dtype"), "bfloat16");
  std::tie(code, out) = run_moe("generate --checkpoint " + path("bf16") +
                                " --prompt x --temperature 0 --max-new-tokens 8");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("precision: fp32 (the bfloat16 checkpoint's weights widened"),
            std::string::npos)
      << out;
  // And back to float32: the bf16 values widened, so a second bf16 export is the same file.
  std::tie(code, out) =
      run_moe("quantize --checkpoint " + path("bf16") + " --out " + path("back") + " --dtype fp32");
  ASSERT_EQ(code, 0) << out;
  std::tie(code, out) = run_moe("quantize --checkpoint " + path("back") + " --out " +
                                path("bf16b") + " --dtype bf16");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(slurp(path("bf16b/model.safetensors")), slurp(path("bf16/model.safetensors")));
}

TEST_F(QuantizeCli, EvalOfInt8Folder) {
  ASSERT_EQ(run_moe("quantize --checkpoint " + ck_ + " --out " + path("int8")).first, 0);
  std::ofstream(path("d.txt")) << "Tis the time's plague, when madmen lead the blind. " +
                                      std::string(150, 'x');
  auto eval = [&](const std::string& args) {
    const auto [code, out] = run_moe("eval --json --data " + path("d.txt") + " " + args);
    EXPECT_EQ(code, 0) << out;
    return code == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
  };
  // An int8 folder computes in int8 (Model::forward through INT8 GEMMs), unless told fp32.
  const auto i8 = eval("--checkpoint " + path("int8"));
  EXPECT_EQ(i8.value("weights", ""), "int8");
  EXPECT_EQ(i8.value("precision", ""), "int8");
  EXPECT_GT(i8.value("tokens", 0), 0);
  const auto deq = eval("--checkpoint " + path("int8") + " --dtype fp32");
  EXPECT_EQ(deq.value("precision", ""), "fp32");
  // The float folder quantized on load gives the stored int8 folder's loss exactly, and both
  // stay within 1% of the fp32 loss (per-channel int8 weights, per-token u8 activations).
  const auto fly = eval("--checkpoint " + ck_ + " --dtype int8");
  const auto f32 = eval("--checkpoint " + ck_);
  EXPECT_EQ(fly.value("loss", -1.0), i8.value("loss", -2.0));
  EXPECT_EQ(f32.value("precision", ""), "fp32");
  EXPECT_NEAR(i8.value("loss", 0.0), f32.value("loss", 1e9), 0.01 * f32.value("loss", 1e9));
  EXPECT_NE(i8.value("loss", 0.0), f32.value("loss", 0.0)) << "int8 changed nothing?";
}

TEST_F(QuantizeCli, BadInput) {
  expect_error("quantize --checkpoint " + ck_ + " --out " + path("x") + " --dtype int4",
               "unknown --dtype 'int4' (allowed: int8, bf16, fp32)");
  EXPECT_FALSE(fs::exists(path("x"))) << "nothing is written for a bad --dtype";
  expect_error("generate --checkpoint " + ck_ + " --prompt x --dtype fp16",
               "unknown --dtype 'fp16' (allowed: fp32, int8");
  expect_error("eval --checkpoint " + ck_ + " --data " + ck_ + " --dtype bf8",
               "unknown --dtype 'bf8'");
  expect_error("quantize --checkpoint " + ck_ + " --out " + ck_, "is the source folder");
  expect_error("quantize --checkpoint " + path("nope") + " --out " + path("y"), "nope");
  // A corrupted quant_method names the file, the value and the fix.
  ASSERT_EQ(run_moe("quantize --checkpoint " + ck_ + " --out " + path("int8")).first, 0);
  std::string cfg = slurp(path("int8/config.json"));
  cfg.replace(cfg.find(kInt8QuantMethod), std::string(kInt8QuantMethod).size(), "awq");
  std::ofstream(path("int8/config.json"), std::ios::trunc) << cfg;
  expect_error("generate --checkpoint " + path("int8") + " --prompt x",
               "quantization_config.quant_method = \"awq\" is not supported");
}

}  // namespace
}  // namespace moe
