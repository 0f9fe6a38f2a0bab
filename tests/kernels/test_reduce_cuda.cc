// The CUDA reduction kernels against the CPU twin on the same seeded input, bit for bit.
// Skipped, visibly, where no GPU is present.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "compression/reduce.h"
#include "kernels/reduce.h"

namespace skyring::kernels {
namespace {

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(std::size_t bytes) {
    if (cudaMalloc(&ptr, bytes == 0 ? 1 : bytes) != cudaSuccess)
      throw std::runtime_error("cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// Empty when a device is usable, else why not.
std::string missingGpu() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return devices == 0 ? "no device" : "";
}

std::vector<std::byte> randomBytes(std::size_t n, DType dtype, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(n * dtypeSize(dtype));
  dispatchDType(dtype, [&]<typename T>() {
    for (std::size_t i = 0; i < n; ++i) {
      const float f = std::uniform_real_distribution<float>(-50.f, 50.f)(rng);
      T v;
      if constexpr (std::is_same_v<T, Float16>) {
        v = toFloat16(f);
      } else if constexpr (std::is_same_v<T, BFloat16>) {
        v = toBFloat16(f);
      } else if constexpr (std::is_integral_v<T>) {
        v = static_cast<T>(static_cast<std::int64_t>(rng()));
      } else {
        v = static_cast<T>(f);
      }
      std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
    }
  });
  return out;
}

TEST(CudaReduce, MatchesCpuTwinBitForBit) {
  if (const std::string why = missingGpu(); !why.empty()) {
    GTEST_SKIP() << "no CUDA device (" << why << "): kernels compiled, not run";
  }
  const std::size_t n = (1u << 20) + 17;
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : kAllReduceOps) {
      const auto a = randomBytes(n, dtype, 11);
      const auto b = randomBytes(n, dtype, 12);
      std::vector<std::byte> cpu(a.size());
      compression::reduce(op, dtype, cpu.data(), a.data(), b.data(), n);
      if (op == ReduceOp::avg) compression::divideBy(dtype, cpu.data(), n, 3);
      DeviceBuffer da(a.size()), db(b.size());
      ASSERT_EQ(cudaMemcpy(da.ptr, a.data(), a.size(), cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(db.ptr, b.data(), b.size(), cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(reduce(op, dtype, da.ptr, da.ptr, db.ptr, n, nullptr), cudaSuccess);
      if (op == ReduceOp::avg) {
        ASSERT_EQ(divideBy(dtype, da.ptr, n, 3, nullptr), cudaSuccess);
      }
      std::vector<std::byte> gpu(a.size());
      ASSERT_EQ(cudaMemcpy(gpu.data(), da.ptr, gpu.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_TRUE(gpu == cpu) << dtypeName(dtype) << " " << reduceOpName(op);
    }
  }
}

}  // namespace
}  // namespace skyring::kernels
