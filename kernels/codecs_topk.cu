// topk's device twin (kernels/codecs.h): exact selection with cub, then the CPU's payload
// (values in index order, LSB-first packed index deltas). No float arithmetic beyond the
// error-feedback add, so the payload equals the CPU's bit for bit.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <bit>
#include <cstdint>

#include "compression/codec_ops.h"
#include "kernels/codecs.h"
#include "kernels/codecs_common.cuh"

namespace skyring::kernels {
namespace {

namespace ops = compression::ops;
using namespace detail;

// Stream-ordered device scratch, freed on the same stream when it goes out of scope.
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    status_ = cudaMallocAsync(&ptr_, bytes == 0 ? 1 : bytes, stream);
    if (status_ != cudaSuccess) ptr_ = nullptr;
  }
  ~StreamScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  cudaError_t status() const { return status_; }
  template <typename T>
  T* at(std::size_t byteOffset) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byteOffset);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  cudaError_t status_;
};

// Sub-allocations of one scratch buffer, each 256-byte aligned.
std::size_t carve(std::size_t& total, std::size_t bytes) {
  const std::size_t at = total;
  total += (bytes + 255) / 256 * 256;
  return at;
}

// ---- topk

// keys[i] = topkKey(v[i], i), v = in (+ residual, which becomes v).
__global__ void topkKeysKernel(const float* in, float* residual, std::uint64_t* keys,
                               std::size_t n) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride()) {
    float v = in[i];
    if (residual != nullptr) {
      residual[i] += in[i];
      v = residual[i];
    }
    keys[i] = ops::topkKey(v, static_cast<std::uint32_t>(i));
  }
}

// flags[i] = 1 when element i is among the k largest: its key is at least the k-th
// largest key (keys are unique: they carry the index).
__global__ void topkFlagKernel(const std::uint64_t* keys, const std::uint64_t* kth,
                               std::uint32_t* flags, std::size_t n) {
  const std::uint64_t t = *kth;
  for (std::size_t i = firstIndex(); i < n; i += gridStride())
    flags[i] = keys[i] >= t ? 1u : 0u;
}

// Selected elements in ascending index order (pos is the exclusive scan of flags).
__global__ void topkGatherKernel(const float* in, float* residual, const std::uint32_t* flags,
                                 const std::uint32_t* pos, float* values, std::uint32_t* index,
                                 std::size_t n) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride()) {
    if (flags[i] == 0) continue;
    values[pos[i]] = residual != nullptr ? residual[i] : in[i];
    index[pos[i]] = static_cast<std::uint32_t>(i);
    if (residual != nullptr) residual[i] = 0.0f;
  }
}

__global__ void topkDeltaKernel(const std::uint32_t* index, std::uint32_t* delta,
                                unsigned* maxDelta, std::size_t k) {
  for (std::size_t j = firstIndex(); j < k; j += gridStride()) {
    const std::uint32_t d = j == 0 ? index[0] : index[j] - index[j - 1] - 1;
    delta[j] = d;
    atomicMax(maxDelta, d);
  }
}

// One thread per packed byte: the deltas overlapping bits [8o, 8o + 8), LSB first.
__global__ void topkPackKernel(const std::uint32_t* delta, std::uint8_t* packed,
                               std::uint32_t* widthOut, std::size_t k, std::uint32_t width) {
  if (firstIndex() == 0) *widthOut = width;
  const std::size_t bytes = (k * width + 7) / 8;
  for (std::size_t o = firstIndex(); o < bytes; o += gridStride()) {
    const std::size_t lo = o * 8;
    std::uint32_t byte = 0;
    for (std::size_t j = lo / width; j < k && j * width < lo + 8; ++j) {
      const std::uint64_t d = delta[j];
      const std::size_t bit = j * width;
      byte |= static_cast<std::uint32_t>(bit >= lo ? d << (bit - lo) : d >> (lo - bit));
    }
    packed[o] = static_cast<std::uint8_t>(byte & 0xffu);
  }
}

// step[j] = delta_j (+1 after the first), read from `width` bits at j * width.
__global__ void topkUnpackKernel(const std::uint8_t* packed, std::size_t packedBytes,
                                 std::uint64_t* step, std::size_t k, std::uint32_t width) {
  const std::uint64_t mask = width == 0 ? 0 : (~std::uint64_t{0} >> (64 - width));
  for (std::size_t j = firstIndex(); j < k; j += gridStride()) {
    const std::size_t bit = j * width;
    std::uint64_t acc = 0;
    for (std::size_t b = 0; b < 5 && bit / 8 + b < packedBytes && b * 8 < (bit % 8) + width; ++b)
      acc |= static_cast<std::uint64_t>(packed[bit / 8 + b]) << (8 * b);
    step[j] = ((acc >> (bit % 8)) & mask) + (j == 0 ? 0 : 1);
  }
}

__global__ void topkScatterKernel(const float* values, const std::uint64_t* index, float* out,
                                  std::size_t n, std::size_t k, unsigned* corrupt) {
  for (std::size_t j = firstIndex(); j < k; j += gridStride()) {
    if (index[j] < n) {
      out[index[j]] = values[j];
    } else {
      *corrupt = 1;
    }
  }
}

}  // namespace

// Exact selection: sort all n composite keys descending (cub radix sort) to learn the
// k-th, flag the keys at or above it, and compact in index order with an exclusive scan.
cudaError_t topkEncode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       std::size_t k, std::size_t* payloadBytes, cudaStream_t stream) {
  if (!aligned4(payload) || payloadBytes == nullptr || count > 0xffffffffu || k > count ||
      (count > 0 && k == 0)) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) {
    *payloadBytes = 4;
    SKYRING_CUDA_TRY(cudaMemsetAsync(payload, 0, 4, stream));
    return cudaStreamSynchronize(stream);
  }
  const int n = static_cast<int>(count > 0x7fffffff ? 0 : count);
  if (n == 0) return cudaErrorInvalidValue;  // cub's item counts are int here
  std::size_t sortBytes = 0, scanBytes = 0;
  SKYRING_CUDA_TRY(cub::DeviceRadixSort::SortKeysDescending(
      nullptr, sortBytes, static_cast<const std::uint64_t*>(nullptr),
      static_cast<std::uint64_t*>(nullptr), n, 0, 64, stream));
  SKYRING_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scanBytes,
                                                 static_cast<const std::uint32_t*>(nullptr),
                                                 static_cast<std::uint32_t*>(nullptr), n, stream));
  std::size_t total = 0;
  const std::size_t keysAt = carve(total, count * 8), sortedAt = carve(total, count * 8);
  const std::size_t flagsAt = carve(total, count * 4), posAt = carve(total, count * 4);
  const std::size_t indexAt = carve(total, k * 4), deltaAt = carve(total, k * 4);
  const std::size_t maxAt = carve(total, 4);
  const std::size_t tempAt = carve(total, sortBytes > scanBytes ? sortBytes : scanBytes);
  StreamScratch scratch(total, stream);
  SKYRING_CUDA_TRY(scratch.status());
  auto* keys = scratch.at<std::uint64_t>(keysAt);
  auto* sorted = scratch.at<std::uint64_t>(sortedAt);
  auto* flags = scratch.at<std::uint32_t>(flagsAt);
  auto* pos = scratch.at<std::uint32_t>(posAt);
  auto* index = scratch.at<std::uint32_t>(indexAt);
  auto* delta = scratch.at<std::uint32_t>(deltaAt);
  auto* maxDelta = scratch.at<unsigned>(maxAt);
  void* temp = scratch.at<void>(tempAt);
  auto* values = reinterpret_cast<float*>(payload + 4);

  topkKeysKernel<<<blocksFor(count), kThreads, 0, stream>>>(in, residual, keys, count);
  SKYRING_CUDA_TRY(cudaGetLastError());
  SKYRING_CUDA_TRY(
      cub::DeviceRadixSort::SortKeysDescending(temp, sortBytes, keys, sorted, n, 0, 64, stream));
  topkFlagKernel<<<blocksFor(count), kThreads, 0, stream>>>(keys, sorted + (k - 1), flags, count);
  SKYRING_CUDA_TRY(cudaGetLastError());
  SKYRING_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, scanBytes, flags, pos, n, stream));
  topkGatherKernel<<<blocksFor(count), kThreads, 0, stream>>>(in, residual, flags, pos, values,
                                                              index, count);
  SKYRING_CUDA_TRY(cudaGetLastError());
  SKYRING_CUDA_TRY(cudaMemsetAsync(maxDelta, 0, sizeof(unsigned), stream));
  topkDeltaKernel<<<blocksFor(k), kThreads, 0, stream>>>(index, delta, maxDelta, k);
  SKYRING_CUDA_TRY(cudaGetLastError());
  unsigned hostMax = 0;
  SKYRING_CUDA_TRY(
      cudaMemcpyAsync(&hostMax, maxDelta, sizeof hostMax, cudaMemcpyDeviceToHost, stream));
  SKYRING_CUDA_TRY(cudaStreamSynchronize(stream));
  const auto width = static_cast<std::uint32_t>(std::bit_width(hostMax));
  const std::size_t packedBytes = ceilDiv(k * width, 8);
  topkPackKernel<<<blocksFor(packedBytes), kThreads, 0, stream>>>(
      delta, reinterpret_cast<std::uint8_t*>(payload + 4 + k * 4),
      reinterpret_cast<std::uint32_t*>(payload), k, width);
  SKYRING_CUDA_TRY(cudaGetLastError());
  *payloadBytes = 4 + k * 4 + packedBytes;
  return cudaStreamSynchronize(stream);
}

cudaError_t topkDecode(const std::byte* payload, std::size_t payloadBytes, float* out,
                       std::size_t count, std::size_t k, cudaStream_t stream) {
  if (!aligned4(payload) || k > count || payloadBytes < 4 || count > 0xffffffffu) {
    return cudaErrorInvalidValue;
  }
  std::uint32_t width = 0;
  SKYRING_CUDA_TRY(cudaMemcpyAsync(&width, payload, 4, cudaMemcpyDeviceToHost, stream));
  SKYRING_CUDA_TRY(cudaStreamSynchronize(stream));
  if (width > 32 || payloadBytes != 4 + k * 4 + ceilDiv(k * width, 8)) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) return cudaSuccess;
  SKYRING_CUDA_TRY(cudaMemsetAsync(out, 0, count * sizeof(float), stream));
  if (k == 0) return cudaStreamSynchronize(stream);
  const int kItems = static_cast<int>(k > 0x7fffffff ? 0 : k);
  if (kItems == 0) return cudaErrorInvalidValue;
  std::size_t scanBytes = 0;
  SKYRING_CUDA_TRY(
      cub::DeviceScan::InclusiveSum(nullptr, scanBytes, static_cast<const std::uint64_t*>(nullptr),
                                    static_cast<std::uint64_t*>(nullptr), kItems, stream));
  std::size_t total = 0;
  const std::size_t stepAt = carve(total, k * 8), indexAt = carve(total, k * 8);
  const std::size_t flagAt = carve(total, 4), tempAt = carve(total, scanBytes);
  StreamScratch scratch(total, stream);
  SKYRING_CUDA_TRY(scratch.status());
  auto* step = scratch.at<std::uint64_t>(stepAt);
  auto* index = scratch.at<std::uint64_t>(indexAt);
  auto* corrupt = scratch.at<unsigned>(flagAt);
  const auto* values = reinterpret_cast<const float*>(payload + 4);
  const auto* packed = reinterpret_cast<const std::uint8_t*>(payload + 4 + k * 4);

  topkUnpackKernel<<<blocksFor(k), kThreads, 0, stream>>>(packed, ceilDiv(k * width, 8), step, k,
                                                          width);
  SKYRING_CUDA_TRY(cudaGetLastError());
  SKYRING_CUDA_TRY(cub::DeviceScan::InclusiveSum(scratch.at<void>(tempAt), scanBytes, step, index,
                                                 kItems, stream));
  SKYRING_CUDA_TRY(cudaMemsetAsync(corrupt, 0, sizeof(unsigned), stream));
  topkScatterKernel<<<blocksFor(k), kThreads, 0, stream>>>(values, index, out, count, k, corrupt);
  SKYRING_CUDA_TRY(cudaGetLastError());
  unsigned hostCorrupt = 0;
  SKYRING_CUDA_TRY(
      cudaMemcpyAsync(&hostCorrupt, corrupt, sizeof hostCorrupt, cudaMemcpyDeviceToHost, stream));
  SKYRING_CUDA_TRY(cudaStreamSynchronize(stream));
  return hostCorrupt != 0 ? cudaErrorInvalidValue : cudaSuccess;
}

}  // namespace skyring::kernels
