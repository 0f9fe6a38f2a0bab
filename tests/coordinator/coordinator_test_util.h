// Helpers of the coordinator's tests: encode a pseudo-gradient in chunks with a codec and
// submit it to an Aggregator, a fresh state, seeded data.
#pragma once

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "coordinator/aggregator.h"
#include "skyring/compression.h"

namespace skyring::coordinator::test {

inline wire::SubmitCodec codecOf(const std::string& spec) {
  if (spec == "fp16") return wire::SubmitCodec::fp16;
  if (spec == "bf16") return wire::SubmitCodec::bf16;
  if (spec == "int8") return wire::SubmitCodec::int8;
  return wire::SubmitCodec::none;
}

// The chunks of values, each chunk `chunk` elements encoded with spec, as blobs.
inline std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> encodeChunks(
    const std::vector<float>& values, std::size_t chunk, const std::string& spec = "none") {
  auto codec = compression::makeCompressor(spec);
  std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> out;
  for (std::size_t at = 0; at < values.size(); at += chunk) {
    const std::size_t n = std::min(chunk, values.size() - at);
    auto state = codec->makeState(n);
    std::vector<std::byte> blob(codec->maxEncodedBytes(n));
    blob.resize(codec->encode(std::span(values).subspan(at, n), state, blob));
    out.emplace_back(at, std::move(blob));
  }
  return out;
}

// What the aggregator will see of values after the codec: decode(encode(values)).
inline std::vector<float> roundTrip(const std::vector<float>& values, std::size_t chunk,
                                    const std::string& spec) {
  std::vector<float> out(values.size());
  for (const auto& [at, blob] : encodeChunks(values, chunk, spec)) {
    const auto h = compression::readHeader(blob);
    compression::decodeAny(blob, std::span(out).subspan(at, h.count));
  }
  return out;
}

inline Admission submit(Aggregator& agg, const std::string& cluster, std::uint64_t round,
                        const std::vector<float>& delta, std::uint64_t samples,
                        Clock::time_point now, std::size_t chunk = 7,
                        const std::string& spec = "none") {
  const Admission a =
      agg.begin(cluster, wire::SubmitBegin{round, codecOf(spec), delta.size(), samples}, now);
  if (a == Admission::duplicate || a == Admission::lateDropped) return a;
  for (const auto& [at, blob] : encodeChunks(delta, chunk, spec))
    agg.chunk(cluster, at, blob);
  return agg.end(cluster, round, now);
}

inline std::vector<float> seeded(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v)
    x = dist(rng);
  return v;
}

inline CoordinatorState freshState(std::vector<float> weights) {
  CoordinatorState s;
  s.weights = std::move(weights);
  return s;
}

inline AggregatorOptions options3(std::uint32_t quorum = 3, LatePolicy late = LatePolicy::drop) {
  AggregatorOptions o;
  o.clusters = {"aws", "azure", "gcp"};
  o.quorum = quorum;
  o.deadline = std::chrono::seconds(10);
  o.late = late;
  o.outer.kind = OuterKind::average;
  return o;
}

}  // namespace skyring::coordinator::test
