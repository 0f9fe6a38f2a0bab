#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "skyring/dtype.h"
#include "skyring/error.h"
#include "skyring/reduce_op.h"

namespace skyring {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtypeSize(DType::f32), 4u);
  EXPECT_EQ(dtypeSize(DType::f64), 8u);
  EXPECT_EQ(dtypeSize(DType::f16), 2u);
  EXPECT_EQ(dtypeSize(DType::bf16), 2u);
  EXPECT_EQ(dtypeSize(DType::i8), 1u);
  EXPECT_EQ(dtypeSize(DType::u8), 1u);
  EXPECT_EQ(dtypeSize(DType::i32), 4u);
  EXPECT_EQ(dtypeSize(DType::i64), 8u);
  for (DType d : kAllDTypes)
    EXPECT_EQ(parseDType(dtypeName(d)), d);
  for (ReduceOp op : kAllReduceOps)
    EXPECT_EQ(parseReduceOp(reduceOpName(op)), op);
  EXPECT_THROW(parseDType("float"), InvalidArgument);
  EXPECT_THROW(parseReduceOp("mean"), InvalidArgument);
}

#ifdef __FLT16_MAX__
// The compiler's own _Float16 is the reference: exhaustive over all 65536 halves.
TEST(Float16, HalfToFloatMatchesCompilerForEveryValue) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    _Float16 ref;
    std::memcpy(&ref, &h, 2);
    const float expected = static_cast<float>(ref);
    const float got = halfBitsToFloat(h);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << bits;
    } else {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(expected))
          << std::hex << bits;
    }
  }
}

TEST(Float16, FloatToHalfRoundsLikeCompiler) {
  auto check = [](float f) {
    const _Float16 ref = static_cast<_Float16>(f);
    std::uint16_t expected;
    std::memcpy(&expected, &ref, 2);
    const std::uint16_t got = floatToHalfBits(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(halfBitsToFloat(got)));
    } else {
      EXPECT_EQ(got, expected) << f;
    }
  };
  // Every half value, and the midpoints between neighbours (the ties).
  for (std::uint32_t bits = 0; bits < 0xffff; ++bits) {
    const float a = halfBitsToFloat(static_cast<std::uint16_t>(bits));
    const float b = halfBitsToFloat(static_cast<std::uint16_t>(bits + 1));
    check(a);
    if (std::isfinite(a) && std::isfinite(b)) {
      check(a + (b - a) / 2);
      check(std::nextafter(a + (b - a) / 2, a));
      check(std::nextafter(a + (b - a) / 2, b));
    }
  }
  std::mt19937 rng(42);
  for (int i = 0; i < 1000000; ++i)
    check(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
  check(1e10f);
  check(-1e10f);
  check(65520.0f);  // rounds to infinity
  check(65519.0f);  // rounds to 65504
}
#endif

TEST(BFloat16, RoundTripAndRounding) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto b = static_cast<std::uint16_t>(bits);
    const float f = bf16BitsToFloat(b);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16BitsToFloat(floatToBf16Bits(f))));
    } else {
      EXPECT_EQ(floatToBf16Bits(f), b) << std::hex << bits;
    }
  }
  // Ties go to even.
  EXPECT_EQ(floatToBf16Bits(std::bit_cast<float>(0x3f808000u)), 0x3f80);
  EXPECT_EQ(floatToBf16Bits(std::bit_cast<float>(0x3f818000u)), 0x3f82);
  EXPECT_EQ(floatToBf16Bits(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_EQ(floatToBf16Bits(3.0e38f * 10), 0x7f80);  // overflow to infinity
}

TEST(DType, DispatchCoversEveryType) {
  for (DType d : kAllDTypes) {
    const std::size_t size = dispatchDType(d, []<typename T>() { return sizeof(T); });
    EXPECT_EQ(size, dtypeSize(d)) << dtypeName(d);
  }
}

}  // namespace
}  // namespace skyring
