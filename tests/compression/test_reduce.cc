// The CPU reducer against a scalar reference written independently of it.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "compression/reduce.h"

namespace skyring::compression {
namespace {

template <typename T>
std::vector<T> randomValues(std::size_t n, std::uint32_t seed, bool smallInts) {
  std::mt19937 rng(seed);
  std::vector<T> out(n);
  for (auto& v : out) {
    const int k = static_cast<int>(rng() % 41) - 20;
    const float f = smallInts ? static_cast<float>(k)
                              : std::uniform_real_distribution<float>(-100.f, 100.f)(rng);
    if constexpr (std::is_same_v<T, Float16>) {
      v = toFloat16(f);
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      v = toBFloat16(f);
    } else if constexpr (std::is_integral_v<T>) {
      v = static_cast<T>(static_cast<std::int64_t>(rng()));
    } else {
      v = static_cast<T>(f);
    }
  }
  return out;
}

template <typename T>
double asDouble(T v) {
  if constexpr (std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>) {
    return toFloat(v);
  } else {
    return static_cast<double>(v);
  }
}

// Reference: widen, combine, narrow, in the most obvious way.
template <typename T>
T reference(ReduceOp op, T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    const auto x = static_cast<std::int64_t>(a), y = static_cast<std::int64_t>(b);
    const std::uint64_t ux = static_cast<std::uint64_t>(x), uy = static_cast<std::uint64_t>(y);
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg:
        return static_cast<T>(ux + uy);
      case ReduceOp::prod:
        return static_cast<T>(ux * uy);
      case ReduceOp::min:
        return std::min(a, b);
      case ReduceOp::max:
        return std::max(a, b);
    }
  } else {
    using W = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const W x = static_cast<W>(asDouble(a)), y = static_cast<W>(asDouble(b));
    W r = 0;
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg:
        r = x + y;
        break;
      case ReduceOp::prod:
        r = x * y;
        break;
      case ReduceOp::min:
        r = std::min(x, y);
        break;
      case ReduceOp::max:
        r = std::max(x, y);
        break;
    }
    if constexpr (std::is_same_v<T, Float16>) {
#ifdef __FLT16_MAX__
      const _Float16 h = static_cast<_Float16>(r);
      Float16 out;
      std::memcpy(&out, &h, 2);
      return out;
#else
      return toFloat16(r);
#endif
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      return toBFloat16(r);
    } else {
      return static_cast<T>(r);
    }
  }
  return a;
}

class Reduce : public ::testing::TestWithParam<std::tuple<DType, ReduceOp>> {};

TEST_P(Reduce, MatchesScalarReferenceInAndOutOfPlace) {
  const auto [dtype, op] = GetParam();
  dispatchDType(dtype, [&, dtype = dtype, op = op]<typename T>() {
    for (std::size_t n : {0u, 1u, 3u, 64u, 1000u, 4099u}) {
      const auto a = randomValues<T>(n, 1, false);
      const auto b = randomValues<T>(n, 2, false);
      std::vector<T> out(n);
      reduce(op, dtype, out.data(), a.data(), b.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        const T want = reference(op, a[i], b[i]);
        ASSERT_EQ(std::memcmp(&out[i], &want, sizeof(T)), 0)
            << dtypeName(dtype) << " " << reduceOpName(op) << " i=" << i << " a=" << asDouble(a[i])
            << " b=" << asDouble(b[i]) << " got " << asDouble(out[i]) << " want " << asDouble(want);
      }
      auto inplace = a;
      reduce(op, dtype, inplace.data(), inplace.data(), b.data(), n);
      if (n > 0) {
        ASSERT_EQ(std::memcmp(inplace.data(), out.data(), n * sizeof(T)), 0);
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(AllTypesAndOps, Reduce,
                         ::testing::Combine(::testing::ValuesIn(kAllDTypes),
                                            ::testing::ValuesIn(kAllReduceOps)),
                         [](const auto& info) {
                           return std::string(dtypeName(std::get<0>(info.param))) + "_" +
                                  std::string(reduceOpName(std::get<1>(info.param)));
                         });

TEST(DivideBy, FloatsAndIntegers) {
  std::vector<float> f{10.f, -3.f, 1.f};
  divideBy(DType::f32, f.data(), f.size(), 4);
  EXPECT_EQ(f, (std::vector<float>{2.5f, -0.75f, 0.25f}));
  std::vector<std::int32_t> i{10, -7, 3};
  divideBy(DType::i32, i.data(), i.size(), 4);
  EXPECT_EQ(i, (std::vector<std::int32_t>{2, -1, 0}));  // truncates toward zero
  std::vector<Float16> h{toFloat16(3.f)};
  divideBy(DType::f16, h.data(), 1, 2);
  EXPECT_EQ(toFloat(h[0]), 1.5f);
}

}  // namespace
}  // namespace skyring::compression
