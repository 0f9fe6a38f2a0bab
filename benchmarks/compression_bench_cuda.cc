// Device encode and decode throughput of the CUDA codec twins (kernels/codecs.h) on 16 Mi
// floats (64 MiB) already in device memory, in bytes of f32 input (or output, for decode)
// per second, beside a device-to-device cudaMemcpy of the same buffer in the same run: the
// memory-bound peer. Times are CUDA events around each call (manual time). Without a
// usable device it prints why and exits 0, so scripted runs do not fail on CPU machines.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "benchmark_main.h"
#include "compression/powersgd.h"
#include "kernels/codecs.h"
#include "skyring/compression.h"

namespace {

namespace sc = skyring::compression;
namespace sk = skyring::kernels;

constexpr std::size_t kCount = std::size_t{16} << 20;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Owned device memory; zeroed so residuals and PowerSGD's warm start begin at zero.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) {
    check(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc");
    check(cudaMemset(ptr_, 0, bytes == 0 ? 1 : bytes), "cudaMemset");
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

class Events {
 public:
  Events() {
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~Events() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  void start() { check(cudaEventRecord(start_, nullptr), "cudaEventRecord"); }
  double stopSeconds() {
    check(cudaEventRecord(stop_, nullptr), "cudaEventRecord");
    check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms / 1e3;
  }

 private:
  cudaEvent_t start_{}, stop_{};
};

// The seeded gradient-like input (as compression_bench), uploaded once.
const DeviceBuffer& deviceInput() {
  static const DeviceBuffer buffer(kCount * sizeof(float));
  static const bool uploaded = [] {
    std::vector<float> v(kCount);
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.0f, 1e-3f);
    for (auto& x : v)
      x = dist(rng);
    check(cudaMemcpy(buffer.as<void>(), v.data(), kCount * sizeof(float), cudaMemcpyHostToDevice),
          "cudaMemcpy");
    return true;
  }();
  static_cast<void>(uploaded);
  return buffer;
}

// One codec on the device: its state and payload buffers, and its header parameter.
struct DeviceCodec {
  explicit DeviceCodec(const char* spec)
      : codec(sc::makeCompressor(spec)),
        payload(codec->maxEncodedBytes(kCount)),
        residual(kCount * sizeof(float)),
        q(sc::powerSgdShape(kCount, codec->options().rank).qSize() * sizeof(float)),
        out(kCount * sizeof(float)) {}

  std::uint32_t param() const {
    switch (codec->codec()) {
      case sc::Codec::int8:
      case sc::Codec::sign:
        return codec->options().blockSize;
      case sc::Codec::topk:
        return static_cast<std::uint32_t>(topkK);
      case sc::Codec::powersgd:
        return static_cast<std::uint32_t>(sc::powerSgdShape(kCount, codec->options().rank).rank);
      default:
        return 0;
    }
  }

  std::size_t encode(std::uint64_t step) {
    const float* in = deviceInput().as<float>();
    float* r = codec->errorFeedback() ? residual.as<float>() : nullptr;
    auto* p = payload.as<std::byte>();
    const sc::CompressionOptions& o = codec->options();
    std::size_t bytes = 0;
    switch (o.codec) {
      case sc::Codec::fp16:
        check(sk::fp16Encode(in, r, p, kCount, nullptr), "fp16Encode");
        return 2 * kCount;
      case sc::Codec::bf16:
        check(sk::bf16Encode(in, r, p, kCount, nullptr), "bf16Encode");
        return 2 * kCount;
      case sc::Codec::int8:
        check(sk::int8Encode(in, r, p, kCount, {o.blockSize, o.stochastic, 1, step}, nullptr),
              "int8Encode");
        return (kCount + o.blockSize - 1) / o.blockSize * 4 + kCount;
      case sc::Codec::sign:
        check(sk::signEncode(in, r, p, kCount, o.blockSize, nullptr), "signEncode");
        return (kCount + o.blockSize - 1) / o.blockSize * 4 + kCount / 8;
      case sc::Codec::topk:
        check(sk::topkEncode(in, r, p, kCount, topkK, &bytes, nullptr), "topkEncode");
        return bytes;
      case sc::Codec::powersgd: {
        check(sk::powerSgdEncode(in, residual.as<float>(), q.as<float>(), p, kCount, o.rank, 1,
                                 codec->errorFeedback(), nullptr),
              "powerSgdEncode");
        const sc::PowerSgdShape s = sc::powerSgdShape(kCount, o.rank);
        return (s.pSize() + s.qSize()) * sizeof(float);
      }
      case sc::Codec::none:
        break;
    }
    throw std::runtime_error("no device twin for none");
  }

  void decode(std::size_t payloadBytes) {
    const auto* p = payload.as<const std::byte>();
    float* y = out.as<float>();
    switch (codec->codec()) {
      case sc::Codec::fp16:
        return check(sk::fp16Decode(p, y, kCount, nullptr), "fp16Decode");
      case sc::Codec::bf16:
        return check(sk::bf16Decode(p, y, kCount, nullptr), "bf16Decode");
      case sc::Codec::int8:
        return check(sk::int8Decode(p, y, kCount, param(), nullptr), "int8Decode");
      case sc::Codec::sign:
        return check(sk::signDecode(p, y, kCount, param(), nullptr), "signDecode");
      case sc::Codec::topk:
        return check(sk::topkDecode(p, payloadBytes, y, kCount, param(), nullptr), "topkDecode");
      case sc::Codec::powersgd:
        return check(sk::powerSgdDecode(p, y, kCount, param(), nullptr), "powerSgdDecode");
      case sc::Codec::none:
        break;
    }
    throw std::runtime_error("no device twin for none");
  }

  std::unique_ptr<sc::Compressor> codec;
  // topk's k, as the CPU codec computes it (topk_codec.cc).
  std::size_t topkK = std::max<std::size_t>(
      1, static_cast<std::size_t>(
             std::round(codec->options().topkFraction* static_cast<double>(kCount))));
  DeviceBuffer payload, residual, q, out;
};

void setBytes(benchmark::State& state) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kCount * sizeof(float)));
}

void BM_DeviceMemcpy(benchmark::State& state) {
  const DeviceBuffer& in = deviceInput();
  DeviceBuffer out(kCount * sizeof(float));
  Events events;
  for (auto _ : state) {
    events.start();
    check(cudaMemcpyAsync(out.as<void>(), in.as<void>(), kCount * sizeof(float),
                          cudaMemcpyDeviceToDevice, nullptr),
          "cudaMemcpyAsync");
    state.SetIterationTime(events.stopSeconds());
  }
  setBytes(state);
}

void BM_GpuEncode(benchmark::State& state, const char* spec) {
  DeviceCodec d(spec);
  Events events;
  std::size_t bytes = 0;
  std::uint64_t step = 0;
  for (auto _ : state) {
    events.start();
    bytes = d.encode(step++);
    state.SetIterationTime(events.stopSeconds());
  }
  setBytes(state);
  state.counters["ratio"] =
      static_cast<double>(kCount * sizeof(float)) / static_cast<double>(bytes + sc::kHeaderBytes);
}

void BM_GpuDecode(benchmark::State& state, const char* spec) {
  DeviceCodec d(spec);
  const std::size_t bytes = d.encode(0);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  Events events;
  for (auto _ : state) {
    events.start();
    d.decode(bytes);
    state.SetIterationTime(events.stopSeconds());
  }
  setBytes(state);
}

#define SKYRING_GPU_CODEC_BENCH(name, spec)                                                    \
  BENCHMARK_CAPTURE(BM_GpuEncode, name, spec)->Unit(benchmark::kMillisecond)->UseManualTime(); \
  BENCHMARK_CAPTURE(BM_GpuDecode, name, spec)->Unit(benchmark::kMillisecond)->UseManualTime()

BENCHMARK(BM_DeviceMemcpy)->Unit(benchmark::kMillisecond)->UseManualTime();
SKYRING_GPU_CODEC_BENCH(fp16, "fp16");
SKYRING_GPU_CODEC_BENCH(fp16_ef, "fp16:ef=1");
SKYRING_GPU_CODEC_BENCH(bf16, "bf16");
SKYRING_GPU_CODEC_BENCH(int8, "int8");
SKYRING_GPU_CODEC_BENCH(int8_stochastic, "int8:stochastic");
SKYRING_GPU_CODEC_BENCH(sign, "sign");
SKYRING_GPU_CODEC_BENCH(topk_exact, "topk:0.01");
SKYRING_GPU_CODEC_BENCH(powersgd4, "powersgd:4");

}  // namespace

int main(int argc, char** argv) {
  // The flags are checked first, so a bad one is an error on machines without a GPU too.
  return skyring::cli::benchmarkMain("compression_bench_cuda", argc, argv, [] {
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess || devices == 0) {
      std::printf("compression_bench_cuda: skipped, no CUDA device (%s)\n",
                  err != cudaSuccess ? cudaGetErrorString(err) : "none found");
      return false;
    }
    return true;
  });
}
