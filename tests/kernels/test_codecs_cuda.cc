// The CUDA codec twins (kernels/codecs.h) against the CPU codecs on the same seeded input:
// payload bytes, error-feedback state and decoded output compared bit for bit, over
// several steps (so the residual and the RNG step are exercised) and counts {0, 1, 7, 97,
// 1029, 2^20}. Skipped, visibly, where no GPU is present.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compression/powersgd.h"
#include "kernels/codecs.h"
#include "skyring/compression.h"

namespace skyring::kernels {
namespace {

namespace sc = compression;

constexpr std::size_t kCounts[] = {0, 1, 7, 97, 1029, std::size_t{1} << 20};
constexpr int kSteps = 3;
constexpr std::uint64_t kSeed = 5;

// Owned device memory of n elements of T (at least one byte, so the pointer is valid).
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : size_(n) {
    if (cudaMalloc(&ptr_, n == 0 ? 1 : n * sizeof(T)) != cudaSuccess)
      throw std::runtime_error("cudaMalloc");
    if (cudaMemset(ptr_, 0, n == 0 ? 1 : n * sizeof(T)) != cudaSuccess)
      throw std::runtime_error("cudaMemset");
  }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return static_cast<T*>(ptr_); }
  void upload(const std::vector<T>& v) {
    ASSERT_LE(v.size(), size_);
    if (!v.empty()) {
      ASSERT_EQ(cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  std::vector<T> download(std::size_t n) const {
    std::vector<T> v(n);
    if (n != 0) cudaMemcpy(v.data(), ptr_, n * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }

 private:
  void* ptr_ = nullptr;
  std::size_t size_;
};

// Empty when a device is usable, else why not.
std::string missingGpu() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return devices == 0 ? "no device" : "";
}

// Gradient-like values with what breaks naive twins: +0 and -0 (sign bits), and many equal
// magnitudes of both signs in the top percent (topk's tie-break by index).
std::vector<float> seededInput(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1e-3f);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = dist(rng);
    if (i % 101 == 3) v[i] = i % 2 == 0 ? 4e-3f : -4e-3f;
    if (i % 29 == 5) v[i] = 0.0f;
    if (i % 31 == 6) v[i] = -0.0f;
  }
  return v;
}

// Index of the first differing byte, or -1.
template <typename T>
long firstDifference(const std::vector<T>& a, const std::vector<T>& b) {
  const auto* x = reinterpret_cast<const unsigned char*>(a.data());
  const auto* y = reinterpret_cast<const unsigned char*>(b.data());
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size() * sizeof(T); ++i)
    if (x[i] != y[i]) return static_cast<long>(i);
  return -1;
}

// The device side of one tensor: the input, the payload, the codec state.
struct DeviceTensor {
  DeviceTensor(std::size_t n, std::size_t payloadBytes, std::size_t qSize)
      : in(n), out(n), residual(n), q(qSize), payload(payloadBytes < 4 ? 4 : payloadBytes) {}
  DeviceArray<float> in, out, residual, q;
  DeviceArray<std::byte> payload;
};

// Encodes on the device what the CPU encoded as `header`; returns the payload size.
std::size_t deviceEncode(const sc::Compressor& c, const sc::WireHeader& h, std::uint64_t step,
                         DeviceTensor& d, std::size_t n) {
  const sc::CompressionOptions& o = c.options();
  float* residual = c.errorFeedback() ? d.residual.get() : nullptr;
  std::byte* payload = d.payload.get();
  std::size_t bytes = 0;
  cudaError_t err = cudaSuccess;
  switch (o.codec) {
    case sc::Codec::fp16:
      err = fp16Encode(d.in.get(), residual, payload, n, nullptr);
      bytes = 2 * n;
      break;
    case sc::Codec::bf16:
      err = bf16Encode(d.in.get(), residual, payload, n, nullptr);
      bytes = 2 * n;
      break;
    case sc::Codec::int8:
      err = int8Encode(d.in.get(), residual, payload, n, {h.param, o.stochastic, kSeed, step},
                       nullptr);
      bytes = (n + h.param - 1) / h.param * 4 + n;
      break;
    case sc::Codec::sign:
      err = signEncode(d.in.get(), residual, payload, n, h.param, nullptr);
      bytes = (n + h.param - 1) / h.param * 4 + (n + 7) / 8;
      break;
    case sc::Codec::topk:
      err = topkEncode(d.in.get(), residual, payload, n, h.param, &bytes, nullptr);
      break;
    case sc::Codec::powersgd: {
      err = powerSgdEncode(d.in.get(), d.residual.get(), d.q.get(), payload, n, o.rank, kSeed,
                           c.errorFeedback(), nullptr);
      const sc::PowerSgdShape s = sc::powerSgdShape(n, o.rank);
      bytes = (s.pSize() + s.qSize()) * 4;
      break;
    }
    case sc::Codec::none:
      ADD_FAILURE() << "no device twin for none";
  }
  EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return bytes;
}

cudaError_t deviceDecode(const sc::WireHeader& h, std::size_t payloadBytes, DeviceTensor& d,
                         std::size_t n) {
  const std::byte* payload = d.payload.get();
  switch (h.codec) {
    case sc::Codec::fp16:
      return fp16Decode(payload, d.out.get(), n, nullptr);
    case sc::Codec::bf16:
      return bf16Decode(payload, d.out.get(), n, nullptr);
    case sc::Codec::int8:
      return int8Decode(payload, d.out.get(), n, h.param, nullptr);
    case sc::Codec::sign:
      return signDecode(payload, d.out.get(), n, h.param, nullptr);
    case sc::Codec::topk:
      return topkDecode(payload, payloadBytes, d.out.get(), n, h.param, nullptr);
    case sc::Codec::powersgd:
      return powerSgdDecode(payload, d.out.get(), n, h.param, nullptr);
    case sc::Codec::none:
      break;
  }
  return cudaErrorInvalidValue;
}

class CudaCodecs : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaCodecs, MatchCpuBitForBit) {
  if (const std::string why = missingGpu(); !why.empty()) {
    GTEST_SKIP() << "no CUDA device (" << why << "): codec kernels compiled, not run";
  }
  const auto c = sc::makeCompressor(GetParam());
  for (const std::size_t n : kCounts) {
    SCOPED_TRACE(std::string(GetParam()) + " n=" + std::to_string(n));
    auto cpu = c->makeState(n, kSeed);
    const std::size_t qSize = sc::powerSgdShape(n, c->options().rank).qSize();
    DeviceTensor d(n, c->maxEncodedBytes(n) - sc::kHeaderBytes, qSize);
    for (int step = 0; step < kSteps; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const std::vector<float> input = seededInput(n, 100 + static_cast<std::uint32_t>(step));
      std::vector<std::byte> bytes(c->maxEncodedBytes(n));
      bytes.resize(c->encode(input, cpu, bytes));
      const sc::WireHeader h = sc::readHeader(bytes);
      const std::vector<std::byte> cpuPayload(bytes.begin() + sc::kHeaderBytes, bytes.end());

      d.in.upload(input);
      const std::size_t gpuBytes = deviceEncode(*c, h, static_cast<std::uint64_t>(step), d, n);
      ASSERT_EQ(gpuBytes, cpuPayload.size());
      EXPECT_EQ(firstDifference(d.payload.download(gpuBytes), cpuPayload), -1)
          << "first differing payload byte";
      if (c->codec() == sc::Codec::powersgd) {
        EXPECT_EQ(firstDifference(d.residual.download(n), cpu.residual), -1) << "M / residual";
        EXPECT_EQ(firstDifference(d.q.download(qSize), cpu.q), -1) << "warm-start Q";
      } else if (c->errorFeedback()) {
        EXPECT_EQ(firstDifference(d.residual.download(n), cpu.residual), -1) << "residual";
      }

      std::vector<float> decoded(n);
      c->decode(bytes, decoded);
      ASSERT_EQ(deviceDecode(h, gpuBytes, d, n), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(firstDifference(d.out.download(n), decoded), -1) << "decoded output";
    }
  }
}

std::string specName(const ::testing::TestParamInfo<const char*>& info) {
  std::string name = info.param;
  for (char& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(EveryCodec, CudaCodecs,
                         ::testing::Values("fp16", "fp16:ef=1", "bf16", "bf16:ef=1", "int8",
                                           "int8:block=7", "int8:stochastic",
                                           "int8:block=1000,stochastic,ef=1", "sign",
                                           "sign:block=13", "sign:block=64,ef=0", "topk:0.01",
                                           "topk:0.3,ef=0", "topk:0.01,sampled", "powersgd:4",
                                           "powersgd:2,ef=0"),
                         specName);

TEST(CudaCodecs, TopkRejectsCorruptPayload) {
  if (const std::string why = missingGpu(); !why.empty()) {
    GTEST_SKIP() << "no CUDA device (" << why << "): codec kernels compiled, not run";
  }
  const std::size_t n = 1000, k = 10;
  DeviceTensor d(n, 4 + 8 * k, 0);
  d.in.upload(seededInput(n, 1));
  std::size_t bytes = 0;
  ASSERT_EQ(topkEncode(d.in.get(), nullptr, d.payload.get(), n, k, &bytes, nullptr), cudaSuccess);
  EXPECT_EQ(topkDecode(d.payload.get(), bytes - 1, d.out.get(), n, k, nullptr),
            cudaErrorInvalidValue);
  // Every delta at its maximum: the indices run past n.
  auto payload = d.payload.download(bytes);
  for (std::size_t i = 4 + 4 * k; i < payload.size(); ++i)
    payload[i] = std::byte{0xff};
  d.payload.upload(payload);
  EXPECT_EQ(topkDecode(d.payload.get(), bytes, d.out.get(), n, k, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace skyring::kernels
