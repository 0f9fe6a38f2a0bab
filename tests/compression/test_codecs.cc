// The compression codecs: spec grammar, wire header, per-codec error bounds and sizes,
// error feedback's conservation law, determinism, and PowerSGD's phases across ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "compression/codecs.h"
#include "compression/powersgd.h"
#include "skyring/compression.h"
#include "skyring/dtype.h"
#include "skyring/error.h"

namespace skyring::compression {
namespace {

const std::size_t kCounts[] = {0, 1, 7, 97, 1029, std::size_t{1} << 20};

std::vector<float> randomInput(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v)
    x = dist(rng);
  return v;
}

std::vector<std::byte> encode(const Compressor& c, std::span<const float> in, CompressorState& st) {
  std::vector<std::byte> out(c.maxEncodedBytes(in.size()));
  out.resize(c.encode(in, st, out));
  return out;
}

std::vector<float> decode(const Compressor& c, std::span<const std::byte> bytes, std::size_t n) {
  std::vector<float> out(n, -1.0f);
  c.decode(bytes, out);
  return out;
}

float payloadScale(std::span<const std::byte> bytes, std::size_t block) {
  return loadF32(bytes.data() + kHeaderBytes + block * sizeof(float));
}

// ---- spec grammar

TEST(CompressionSpec, ParsesEveryCodecAndRoundTripsThroughFormat) {
  for (const char* spec :
       {"none", "fp16", "bf16", "int8:block=256", "int8:block=128,stochastic", "sign:block=1024",
        "topk:0.01", "topk:0.001,sampled,ef=0", "powersgd:4", "fp16:ef=1", "sign:block=64,ef=0"}) {
    const CompressionOptions o = parseCompressionSpec(spec);
    EXPECT_EQ(formatSpec(o), spec);
    EXPECT_EQ(makeCompressor(spec)->spec(), spec);
  }
  EXPECT_EQ(formatSpec(parseCompressionSpec("int8")), "int8:block=256");
  EXPECT_EQ(parseCompressionSpec("topk:fraction=0.5").topkFraction, 0.5);
  EXPECT_EQ(parseCompressionSpec("powersgd:rank=2").rank, 2u);
}

TEST(CompressionSpec, ErrorFeedbackDefaults) {
  for (const char* off : {"none", "fp16", "bf16", "int8"}) {
    EXPECT_FALSE(makeCompressor(off)->errorFeedback()) << off;
  }
  for (const char* on : {"sign", "topk:0.01", "powersgd:2"}) {
    EXPECT_TRUE(makeCompressor(on)->errorFeedback()) << on;
    const std::string spec(on);
    const char* sep = spec.find(':') == std::string::npos ? ":" : ",";
    EXPECT_FALSE(makeCompressor(spec + sep + "ef=0")->errorFeedback()) << on;
  }
  EXPECT_TRUE(makeCompressor("int8:ef=1")->errorFeedback());
}

TEST(CompressionSpec, RejectsBadSpecsListingValidNames) {
  for (const char* bad : {"", "zstd", "FP16", "fp16:", "fp16:block=4", "int8:block=0",
                          "int8:block=x", "int8:block=", "int8:stochastic=1", "topk:0", "topk:1.5",
                          "topk:abc", "topk:0.1,", "powersgd:0", "powersgd:100000", "powersgd:-1",
                          "sign:ef=2", "topk:sampled,0.1", "none,ef=0"}) {
    try {
      makeCompressor(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("none, fp16, bf16, int8, sign, topk, powersgd"),
                std::string::npos)
          << e.what();
    }
  }
  CompressionOptions o;
  o.codec = Codec::powersgd;
  o.rank = 0;
  EXPECT_THROW(makeCompressor(o), InvalidArgument);
}

// ---- wire header

TEST(WireFormat, HeaderLayoutAndEveryCorruptByteDetected) {
  const auto c = makeCompressor("int8:block=64");
  const auto in = randomInput(1000, 1);
  auto st = c->makeState(in.size());
  const auto bytes = encode(*c, in, st);
  EXPECT_EQ(std::memcmp(bytes.data(), "SKRC", 4), 0);
  const WireHeader h = readHeader(bytes);
  EXPECT_EQ(h.codec, Codec::int8);
  EXPECT_EQ(h.count, 1000u);
  EXPECT_EQ(h.param, 64u);
  EXPECT_EQ(h.flags, 0);
  for (std::size_t i = 0; i < kHeaderBytes; ++i) {
    for (int bit : {0, 3, 7}) {
      auto bad = bytes;
      bad[i] ^= static_cast<std::byte>(1 << bit);
      std::vector<float> out(1000);
      EXPECT_THROW(c->decode(bad, out), InvalidArgument) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(WireFormat, RejectsTruncationWrongCodecAndWrongCount) {
  const auto in = randomInput(97, 2);
  for (const char* spec : {"none", "fp16", "bf16", "int8", "sign", "topk:0.1", "powersgd:2"}) {
    const auto c = makeCompressor(spec);
    auto st = c->makeState(in.size());
    const auto bytes = encode(*c, in, st);
    std::vector<float> out(97);
    EXPECT_THROW(c->decode(std::span(bytes).first(bytes.size() - 1), out), InvalidArgument) << spec;
    EXPECT_THROW(c->decode(std::span(bytes).first(10), out), InvalidArgument) << spec;
    std::vector<float> wrongCount(96);
    EXPECT_THROW(c->decode(bytes, wrongCount), InvalidArgument) << spec;
    const auto other = makeCompressor(std::string_view(spec) == "none" ? "fp16" : "none");
    EXPECT_THROW(other->decode(bytes, out), InvalidArgument) << spec;
    decodeAny(bytes, out);
    EXPECT_EQ(out, decode(*c, bytes, 97)) << spec;
  }
}

TEST(WireFormat, EncodeChecksStateAndOutputSize) {
  const auto c = makeCompressor("sign");
  auto st = c->makeState(10);
  const auto in = randomInput(11, 3);
  std::vector<std::byte> out(c->maxEncodedBytes(11));
  EXPECT_THROW(c->encode(in, st, out), InvalidArgument);
  auto st11 = c->makeState(11);
  EXPECT_THROW(c->encode(in, st11, std::span(out).first(out.size() - 1)), InvalidArgument);
  EXPECT_EQ(st11.step, 0u);
}

// ---- per-codec bounds and sizes

TEST(Codecs, NoneIsExact) {
  const auto c = makeCompressor("none");
  for (std::size_t n : kCounts) {
    const auto in = randomInput(n, 4);
    auto st = c->makeState(n);
    const auto bytes = encode(*c, in, st);
    EXPECT_EQ(bytes.size(), kHeaderBytes + 4 * n);
    EXPECT_EQ(decode(*c, bytes, n), in);
  }
}

TEST(Codecs, Fp16MatchesScalarConversionAndBound) {
  const auto c = makeCompressor("fp16");
  EXPECT_TRUE(c->linear());
  for (std::size_t n : kCounts) {
    auto in = randomInput(n, 5, 100.0f);
    // Specials and rounding edge cases, so the SIMD path is checked bit for bit.
    const float specials[] = {0.0f,
                              -0.0f,
                              65504.0f,
                              65520.0f,
                              -65519.0f,
                              1e-8f,
                              -6e-5f,
                              std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(),
                              -std::numeric_limits<float>::quiet_NaN(),
                              std::bit_cast<float>(0x7f800001u),
                              1.0009765625f + 0x1p-12f};
    for (std::size_t i = 0; i < std::min(n, std::size(specials)); ++i)
      in[i * 7 % n] = specials[i];
    auto st = c->makeState(n);
    const auto bytes = encode(*c, in, st);
    ASSERT_EQ(bytes.size(), kHeaderBytes + 2 * n);
    const auto out = decode(*c, bytes, n);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, bytes.data() + kHeaderBytes + 2 * i, 2);
      ASSERT_EQ(h, floatToHalfBits(in[i])) << i << " " << in[i];
      if (std::isnan(in[i])) {
        ASSERT_TRUE(std::isnan(out[i]));
      } else if (std::fabs(in[i]) >= 0x1p-14f && std::fabs(in[i]) < 65504.0f) {
        ASSERT_LE(std::fabs(out[i] - in[i]), std::fabs(in[i]) * 0x1p-11f) << in[i];
      }
    }
  }
}

TEST(Codecs, Fp16DecodeMatchesScalarForAllNonSignallingHalves) {
  const auto c = makeCompressor("fp16");
  std::vector<std::byte> bytes(kHeaderBytes + 2 * 65536);
  writeHeader({Codec::fp16, 0, 65536, 0}, bytes);
  for (std::uint32_t h = 0; h < 65536; ++h)
    std::memcpy(bytes.data() + kHeaderBytes + 2 * h, &h, 2);
  const auto out = decode(*c, bytes, 65536);
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const bool signalling = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0 && (h & 0x200u) == 0;
    if (signalling) continue;  // F16C quietens them; the encoder never produces them
    ASSERT_EQ(std::bit_cast<std::uint32_t>(out[h]),
              std::bit_cast<std::uint32_t>(halfBitsToFloat(static_cast<std::uint16_t>(h))))
        << std::hex << h;
  }
}

TEST(Codecs, Bf16Bound) {
  const auto c = makeCompressor("bf16");
  for (std::size_t n : kCounts) {
    const auto in = randomInput(n, 6, 1e3f);
    auto st = c->makeState(n);
    const auto bytes = encode(*c, in, st);
    ASSERT_EQ(bytes.size(), kHeaderBytes + 2 * n);
    const auto out = decode(*c, bytes, n);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_LE(std::fabs(out[i] - in[i]), std::fabs(in[i]) * 0x1p-8f) << in[i];
      std::uint16_t b;
      std::memcpy(&b, bytes.data() + kHeaderBytes + 2 * i, 2);
      ASSERT_EQ(b, floatToBf16Bits(in[i]));
    }
  }
}

void checkInt8(const char* spec, std::size_t block, bool stochastic) {
  const auto c = makeCompressor(spec);
  for (std::size_t n : kCounts) {
    const auto in = randomInput(n, 7);
    auto st = c->makeState(n, 99);
    const auto bytes = encode(*c, in, st);
    const std::size_t blocks = (n + block - 1) / block;
    ASSERT_EQ(bytes.size(), kHeaderBytes + 4 * blocks + n) << spec;
    const auto out = decode(*c, bytes, n);
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::size_t end = std::min(n, (b + 1) * block);
      float maxAbs = 0;
      for (std::size_t i = b * block; i < end; ++i)
        maxAbs = std::max(maxAbs, std::fabs(in[i]));
      const float scale = payloadScale(bytes, b);
      ASSERT_EQ(scale, maxAbs / 127.0f);
      for (std::size_t i = b * block; i < end; ++i) {
        const float err = std::fabs(out[i] - in[i]);
        if (stochastic) {
          ASSERT_LT(err, scale * 1.0001f) << spec << " i=" << i;
        } else {
          ASSERT_LE(err, scale * 0.5f * 1.0001f) << spec << " i=" << i;
        }
      }
    }
  }
}

TEST(Codecs, Int8NearestEvenWithinHalfScale) {
  checkInt8("int8", 256, false);
  checkInt8("int8:block=1", 1, false);
  checkInt8("int8:block=5000", 5000, false);
}

TEST(Codecs, Int8StochasticWithinScaleAndUnbiased) {
  checkInt8("int8:block=64,stochastic", 64, true);
  // The mean of many stochastic encodings of the same value approaches the value.
  const auto c = makeCompressor("int8:block=2,stochastic");
  const std::vector<float> in = {1.0f, 0.3f};
  auto st = c->makeState(2, 5);
  double sum = 0;
  for (int t = 0; t < 4000; ++t)
    sum += decode(*c, encode(*c, in, st), 2)[1];
  EXPECT_NEAR(sum / 4000, 0.3, 0.01);
}

TEST(Codecs, SignSendsMeanMagnitudePerBlock) {
  for (const auto& [spec, block] :
       {std::pair{"sign:ef=0", 1024}, std::pair{"sign:block=5,ef=0", 5}}) {
    const auto c = makeCompressor(spec);
    for (std::size_t n : kCounts) {
      const auto in = randomInput(n, 8);
      auto st = c->makeState(n);
      const auto bytes = encode(*c, in, st);
      const std::size_t blocks = (n + block - 1) / block;
      ASSERT_EQ(bytes.size(), kHeaderBytes + 4 * blocks + (n + 7) / 8);
      const auto out = decode(*c, bytes, n);
      for (std::size_t b = 0; b < blocks; ++b) {
        const std::size_t end = std::min<std::size_t>(n, (b + 1) * block);
        double sum = 0;
        for (std::size_t i = b * block; i < end; ++i)
          sum += std::fabs(in[i]);
        const double mean = sum / static_cast<double>(end - b * block);
        for (std::size_t i = b * block; i < end; ++i) {
          ASSERT_NEAR(out[i], std::signbit(in[i]) ? -mean : mean, 1e-5 * mean) << i;
        }
      }
    }
  }
}

TEST(Codecs, TopkSendsTheLargestExactly) {
  for (const char* spec : {"topk:0.01,ef=0", "topk:0.3,ef=0", "topk:0.01,sampled,ef=0"}) {
    const auto c = makeCompressor(spec);
    const double fraction = c->options().topkFraction;
    for (std::size_t n : kCounts) {
      auto in = randomInput(n, 9);
      if (n > 10) in[3] = in[9] = 50.0f;  // a tie, well inside the top k
      auto st = c->makeState(n);
      const auto bytes = encode(*c, in, st);
      const auto out = decode(*c, bytes, n);
      const std::size_t k = n == 0 ? 0 : std::clamp<std::size_t>(std::llround(fraction * n), 1, n);
      ASSERT_EQ(readHeader(bytes).param, k);
      ASSERT_LE(bytes.size(), c->maxEncodedBytes(n));
      std::vector<float> mags(n);
      for (std::size_t i = 0; i < n; ++i)
        mags[i] = std::fabs(in[i]);
      std::vector<float> sorted = mags;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      std::size_t sent = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (out[i] == 0.0f) continue;
        ++sent;
        ASSERT_EQ(out[i], in[i]);
        ASSERT_GE(mags[i], sorted[k - 1]);
      }
      ASSERT_EQ(sent, k) << spec << " n=" << n;
    }
  }
}

TEST(Codecs, TopkSampledGivesTheExactPayload) {
  const auto exact = makeCompressor("topk:0.01");
  const auto sampled = makeCompressor("topk:0.01,sampled");
  const auto in = randomInput(std::size_t{1} << 20, 10);
  auto s1 = exact->makeState(in.size(), 3);
  auto s2 = sampled->makeState(in.size(), 3);
  for (int step = 0; step < 3; ++step) {
    const auto a = encode(*exact, in, s1);
    const auto b = encode(*sampled, in, s2);
    EXPECT_TRUE(readHeader(b).flags & kFlagSampled);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(
        std::memcmp(a.data() + kHeaderBytes, b.data() + kHeaderBytes, a.size() - kHeaderBytes), 0);
    EXPECT_EQ(s1.residual, s2.residual);
  }
}

TEST(Codecs, PowerSgdIsExactForLowRankMatrices) {
  for (std::size_t rank : {1u, 2u, 4u}) {
    const auto c = makeCompressor("powersgd:4,ef=0");
    for (std::size_t n : {std::size_t{4096}, std::size_t{1029}, std::size_t{1} << 20}) {
      const PowerSgdShape s = powerSgdShape(n, 4);
      auto a = randomInput(s.rows * rank, 11);
      // The padding of a partial last row is zero, so that row must be zero for M to have
      // rank `rank`.
      if (n % s.cols != 0) std::fill(a.end() - static_cast<std::ptrdiff_t>(rank), a.end(), 0.0f);
      const auto b = randomInput(s.cols * rank, 12);
      std::vector<float> m(n);
      for (std::size_t i = 0; i < n; ++i) {
        double x = 0;
        for (std::size_t j = 0; j < rank; ++j)
          x += static_cast<double>(a[(i / s.cols) * rank + j]) * b[(i % s.cols) * rank + j];
        m[i] = static_cast<float>(x);
      }
      auto st = c->makeState(n, 1);
      const auto bytes = encode(*c, m, st);
      ASSERT_EQ(bytes.size(), kHeaderBytes + 4 * (s.rows + s.cols) * s.rank);
      const auto out = decode(*c, bytes, n);
      float maxAbs = 0, maxErr = 0;
      for (std::size_t i = 0; i < n; ++i) {
        maxAbs = std::max(maxAbs, std::fabs(m[i]));
        maxErr = std::max(maxErr, std::fabs(out[i] - m[i]));
      }
      EXPECT_LE(maxErr, 1e-4f * maxAbs) << "rank " << rank << " n " << n;
    }
  }
}

TEST(Codecs, PowerSgdShapeIsNearSquare) {
  EXPECT_EQ(powerSgdShape(0, 4).rank, 0u);
  const PowerSgdShape one = powerSgdShape(1, 4);
  EXPECT_EQ(one.rows * one.cols * one.rank, 1u);
  const PowerSgdShape s = powerSgdShape(1029, 4);
  EXPECT_EQ(s.cols, 33u);
  EXPECT_EQ(s.rows, 32u);
  EXPECT_EQ(powerSgdShape(std::size_t{1} << 20, 4).cols, 1024u);
}

TEST(Codecs, AllCodecsHandleEveryCount) {
  for (const char* spec : {"none", "fp16", "bf16", "int8", "int8:stochastic", "sign", "topk:0.01",
                           "topk:0.01,sampled", "powersgd:4"}) {
    const auto c = makeCompressor(spec);
    for (std::size_t n : kCounts) {
      const auto in = randomInput(n, 13);
      auto st = c->makeState(n, 1);
      const auto bytes = encode(*c, in, st);
      EXPECT_EQ(readHeader(bytes).count, n);
      const auto out = decode(*c, bytes, n);
      for (float x : out)
        ASSERT_TRUE(std::isfinite(x)) << spec << " n=" << n;
    }
  }
}

TEST(Codecs, RatiosOnOneMillionElements) {
  const std::size_t n = std::size_t{1} << 20;
  const auto in = randomInput(n, 14);
  auto ratio = [&](const char* spec) {
    const auto c = makeCompressor(spec);
    auto st = c->makeState(n, 1);
    return static_cast<double>(4 * n) / static_cast<double>(encode(*c, in, st).size());
  };
  EXPECT_NEAR(ratio("fp16"), 2.0, 1e-3);
  EXPECT_NEAR(ratio("bf16"), 2.0, 1e-3);
  EXPECT_NEAR(ratio("int8"), 4.0 / (1.0 + 4.0 / 256), 1e-3);
  EXPECT_GT(ratio("sign"), 31.0);
  EXPECT_GE(ratio("topk:0.01"), 50.0);
  EXPECT_GE(ratio("powersgd:4"), 100.0);
}

// ---- error feedback: nothing is lost, only delayed

TEST(ErrorFeedback, DecodedPlusResidualEqualsInputsOverSteps) {
  for (const char* spec :
       {"none:ef=1", "fp16:ef=1", "bf16:ef=1", "int8:ef=1", "int8:stochastic,ef=1", "sign",
        "sign:block=7", "topk:0.01", "topk:0.05,sampled", "powersgd:2"}) {
    const auto c = makeCompressor(spec);
    ASSERT_TRUE(c->errorFeedback());
    for (std::size_t n : {std::size_t{1}, std::size_t{97}, std::size_t{1029}, std::size_t{65536}}) {
      auto st = c->makeState(n, 21);
      std::vector<double> inputs(n, 0.0), sent(n, 0.0);
      double magnitude = 0;
      for (std::uint32_t t = 0; t < 6; ++t) {
        const auto in = randomInput(n, 100 + t);
        const auto out = decode(*c, encode(*c, in, st), n);
        for (std::size_t i = 0; i < n; ++i) {
          inputs[i] += in[i];
          sent[i] += out[i];
          magnitude = std::max(magnitude, std::fabs(static_cast<double>(in[i])));
        }
      }
      ASSERT_EQ(st.step, 6u);
      double worst = 0;
      for (std::size_t i = 0; i < n; ++i)
        worst = std::max(worst, std::fabs(sent[i] + st.residual[i] - inputs[i]));
      EXPECT_LE(worst, 1e-5 * magnitude) << spec << " n=" << n;
    }
  }
}

TEST(ErrorFeedback, OffLeavesNoResidual) {
  const auto c = makeCompressor("topk:0.1,ef=0");
  auto st = c->makeState(100);
  EXPECT_TRUE(st.residual.empty());
  const auto in = randomInput(100, 22);
  encode(*c, in, st);
  EXPECT_FALSE(readHeader(encode(*c, in, st)).flags & kFlagErrorFeedback);
}

// ---- determinism

TEST(Determinism, SameSeedSameBytesDifferentSeedDifferentBytes) {
  const auto in = randomInput(5000, 30);
  for (const char* spec : {"int8:stochastic", "topk:0.01,sampled", "powersgd:3", "sign"}) {
    const auto c = makeCompressor(spec);
    auto a = c->makeState(in.size(), 42), b = c->makeState(in.size(), 42);
    for (int t = 0; t < 3; ++t)
      ASSERT_EQ(encode(*c, in, a), encode(*c, in, b)) << spec << " step " << t;
  }
  const auto c = makeCompressor("int8:stochastic");
  auto a = c->makeState(in.size(), 1), b = c->makeState(in.size(), 2);
  EXPECT_NE(encode(*c, in, a), encode(*c, in, b));
}

// ---- PowerSGD phases across ranks (the allreduces done by hand)

TEST(PowerSgdPhases, ThreeRanksRecoverTheAverageOfRankOneGradients) {
  const std::size_t n = 1029, world = 3;
  const PowerSgdShape s = powerSgdShape(n, 2);
  const auto a = randomInput(s.rows, 40);
  std::vector<std::vector<float>> grads(world, std::vector<float>(n));
  std::vector<double> average(n, 0.0);
  for (std::size_t r = 0; r < world; ++r) {
    const auto b = randomInput(s.cols, 41 + static_cast<std::uint32_t>(r));
    for (std::size_t i = 0; i < n; ++i) {
      grads[r][i] = a[i / s.cols] * b[i % s.cols];
      average[i] += grads[r][i] / static_cast<double>(world);
    }
  }
  std::vector<CompressorState> states(world);
  for (auto& st : states) {
    st.count = n;
    st.seed = 9;
  }
  std::vector<std::vector<float>> p(world, std::vector<float>(s.pSize()));
  std::vector<std::vector<float>> q(world, std::vector<float>(s.qSize()));
  std::vector<float> pSum(s.pSize(), 0.0f), qAvg(s.qSize(), 0.0f);
  for (std::size_t r = 0; r < world; ++r) {
    powerSgdComputeP(grads[r], true, s, states[r], p[r]);
    for (std::size_t i = 0; i < pSum.size(); ++i)
      pSum[i] += p[r][i];
  }
  for (std::size_t r = 0; r < world; ++r) {
    auto pr = pSum;
    powerSgdComputeQ(s, states[r], pr, q[r]);
    for (std::size_t i = 0; i < qAvg.size(); ++i)
      qAvg[i] += q[r][i] / static_cast<float>(world);
  }
  for (std::size_t r = 0; r < world; ++r) {
    auto pr = pSum;
    powerSgdComputeQ(s, states[r], pr, q[r]);  // orthonormalised p, as every rank has it
    std::vector<float> out(n);
    powerSgdDecompress(true, s, states[r], pr, qAvg, out);
    for (std::size_t i = 0; i < n; ++i)
      ASSERT_NEAR(out[i], average[i], 1e-4) << "rank " << r << " i " << i;
    EXPECT_EQ(states[r].q, qAvg);
  }
}

}  // namespace
}  // namespace skyring::compression
