// `moe train --train.dtype bf16|fp8` as a user runs it: the CPU fallback without AVX-512 BF16,
// FP8 on sizes that are not multiples of 128, exact resume, and bad values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>

#include "kernels/cpu/quantize.h"
#include "run_binary.h"

namespace moe {
namespace {

using moe::testing::run_command;
using moe::testing::run_moe;
namespace fs = std::filesystem;

// A short run of the default tiny model (hidden 64: no size is a multiple of 128).
const char* kShort =
    "train --steps 12 --batch 4 --seq-len 64 --samples 0 --log.every 4 --log.progress plain "
    "--train.eval_tokens 0";

// The loss printed on the line of step `step`, or NaN.
double loss_at(const std::string& out, int step) {
  const std::regex re("step +" + std::to_string(step) + "/[0-9]+ \\| loss ([0-9.]+)");
  std::smatch m;
  return std::regex_search(out, m, re) ? std::stod(m[1]) : NAN;
}

std::string temp_dir(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("moe_lowp_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

TEST(LowPrecisionTrain, Bf16FallbackWithoutAvx512Bf16WarnsAndTrainsTheSame) {
  const std::string args = std::string(kShort) + " --train.dtype bf16 --out ";
  const std::string d1 = temp_dir("native"), d2 = temp_dir("fallback");
  const auto [rc1, native] = run_moe(args + d1);
  const auto [rc2, fallback] =
      run_command("MOE_NO_AVX512_BF16=1 " + std::string(MOE_BINARY) + " " + args + d2);
  ASSERT_EQ(rc1, 0) << native;
  ASSERT_EQ(rc2, 0) << fallback;
  EXPECT_NE(fallback.find("no AVX-512 BF16 dot product"), std::string::npos) << fallback;
  if (cpu::bf16_native()) {
    EXPECT_EQ(native.find("no AVX-512 BF16 dot product"), std::string::npos) << native;
  }
  // The same bf16 products summed in f32 by another kernel: equal up to summation order.
  const double a = loss_at(native, 12), b = loss_at(fallback, 12);
  ASSERT_TRUE(std::isfinite(a) && std::isfinite(b)) << native << fallback;
  EXPECT_NEAR(a, b, 5e-3 * a);
  EXPECT_LT(a, loss_at(native, 4)) << "bf16 training did not lower the loss";
  fs::remove_all(d1), fs::remove_all(d2);
}

TEST(LowPrecisionTrain, Fp8TrainsOnSizesThatAreNotMultiplesOf128) {
  // hidden 64, heads of 16, experts of 32: every FP8 tile and block is a padded tail.
  const std::string dir = temp_dir("fp8");
  const auto [rc, out] = run_moe(std::string(kShort) + " --train.dtype fp8 --out " + dir);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("GEMMs in fp8"), std::string::npos) << out;
  const double first = loss_at(out, 4), last = loss_at(out, 12);
  ASSERT_TRUE(std::isfinite(first) && std::isfinite(last)) << out;
  EXPECT_LT(last, first) << out;
  fs::remove_all(dir);
}

TEST(LowPrecisionTrain, Bf16ResumeIsBitwiseExact) {
  // Weights are cast from the f32 masters at every pass, so a resumed run recomputes the same
  // bf16 copies: the losses after the restart equal the uninterrupted run's.
  const std::string a = temp_dir("whole"), b = temp_dir("split");
  const std::string args = std::string(kShort) + " --train.dtype bf16 --checkpoint.every 4 --out ";
  const auto [rc1, whole] = run_moe(args + a);
  ASSERT_EQ(rc1, 0) << whole;
  const auto [rc2, first] = run_moe(args + b + " --checkpoint.stop_after 8");
  ASSERT_EQ(rc2, 0) << first;
  const auto [rc3, rest] = run_moe(args + b + " --resume");
  ASSERT_EQ(rc3, 0) << rest;
  ASSERT_TRUE(std::isfinite(loss_at(whole, 12))) << whole;
  EXPECT_EQ(loss_at(whole, 12), loss_at(rest, 12)) << whole << "\n---\n" << rest;
  fs::remove_all(a), fs::remove_all(b);
}

TEST(LowPrecisionTrain, UnknownDtypeNamesTheKeyAndTheChoices) {
  const auto [rc, out] = run_moe(std::string(kShort) + " --train.dtype fp16");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("dtype"), std::string::npos) << out;
  EXPECT_NE(out.find("fp32|bf16|fp8"), std::string::npos) << out;
  EXPECT_NE(out.find("fp16"), std::string::npos) << out;
}

}  // namespace
}  // namespace moe
