// Encode and decode throughput of every codec on 16 Mi floats (64 MiB), in bytes of f32
// input (or output, for decode) per second, beside memcpy of the same buffer as the
// memory-bound peer. Inputs are seeded normal-ish values, like a gradient.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "benchmark_main.h"
#include "skyring/compression.h"

namespace {

namespace sc = skyring::compression;

constexpr std::size_t kCount = std::size_t{16} << 20;

const std::vector<float>& input() {
  static const std::vector<float> data = [] {
    std::vector<float> v(kCount);
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 1e-3f);
    for (auto& x : v)
      x = dist(rng);
    return v;
  }();
  return data;
}

void BM_Memcpy(benchmark::State& state) {
  const auto& in = input();
  std::vector<float> out(kCount);
  for (auto _ : state) {
    std::memcpy(out.data(), in.data(), kCount * sizeof(float));
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kCount * sizeof(float)));
}

void BM_Encode(benchmark::State& state, const char* spec) {
  const auto codec = sc::makeCompressor(spec);
  const auto& in = input();
  auto st = codec->makeState(kCount, 1);
  std::vector<std::byte> out(codec->maxEncodedBytes(kCount));
  std::size_t bytes = 0;
  for (auto _ : state) {
    bytes = codec->encode(in, st, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kCount * sizeof(float)));
  state.counters["ratio"] =
      static_cast<double>(kCount * sizeof(float)) / static_cast<double>(bytes);
}

void BM_Decode(benchmark::State& state, const char* spec) {
  const auto codec = sc::makeCompressor(spec);
  const auto& in = input();
  auto st = codec->makeState(kCount, 1);
  std::vector<std::byte> enc(codec->maxEncodedBytes(kCount));
  enc.resize(codec->encode(in, st, enc));
  std::vector<float> out(kCount);
  for (auto _ : state) {
    codec->decode(enc, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kCount * sizeof(float)));
}

#define SKYRING_CODEC_BENCH(name, spec)                                                   \
  BENCHMARK_CAPTURE(BM_Encode, name, spec)->Unit(benchmark::kMillisecond)->UseRealTime(); \
  BENCHMARK_CAPTURE(BM_Decode, name, spec)->Unit(benchmark::kMillisecond)->UseRealTime()

BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
SKYRING_CODEC_BENCH(none, "none");
SKYRING_CODEC_BENCH(fp16, "fp16");
SKYRING_CODEC_BENCH(fp16_ef, "fp16:ef=1");
SKYRING_CODEC_BENCH(bf16, "bf16");
SKYRING_CODEC_BENCH(int8, "int8");
SKYRING_CODEC_BENCH(int8_stochastic, "int8:stochastic");
SKYRING_CODEC_BENCH(sign, "sign");
SKYRING_CODEC_BENCH(topk_exact, "topk:0.01");
SKYRING_CODEC_BENCH(topk_sampled, "topk:0.01,sampled");
SKYRING_CODEC_BENCH(powersgd4, "powersgd:4");

}  // namespace

int main(int argc, char** argv) {
  return skyring::cli::benchmarkMain("compression_bench", argc, argv, [] { return true; });
}
