// core/format.h: the one way numbers are printed for people (moe info, moe data, reports,
// comm tools).
#include <gtest/gtest.h>

#include "core/format.h"

namespace moe {

TEST(Format, CountsUseThreeSignificantDigits) {
  EXPECT_EQ(human_count(0), "0");
  EXPECT_EQ(human_count(999), "999");
  EXPECT_EQ(human_count(1234), "1.23K");
  EXPECT_EQ(human_count(12345678), "12.3M");
  EXPECT_EQ(human_count(671e9), "671B");
  EXPECT_EQ(human_count(1.5e15), "1500T");  // no unit past T
  EXPECT_EQ(human_count(-2500), "-2.50K");
}

TEST(Format, BytesUseBinaryUnits) {
  EXPECT_EQ(human_bytes(512), "512 B");
  EXPECT_EQ(human_bytes(1023), "1023 B");
  EXPECT_EQ(human_bytes(1536), "1.50 KiB");
  EXPECT_EQ(human_bytes(64.0 * (1 << 20)), "64.0 MiB");
  EXPECT_EQ(human_bytes(2540.0 * (1 << 20)), "2.48 GiB");
}

TEST(Format, Flops) {
  EXPECT_EQ(human_flops(281e9), "281 GFLOP");
  EXPECT_EQ(human_flops(1.25e12), "1.25 TFLOP");
  EXPECT_EQ(human_flops(12), "12 FLOP");
}

}  // namespace moe
