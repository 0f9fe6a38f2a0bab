// Device kernels of the elementwise codecs and PowerSGD (kernels/codecs.h; topk is in
// codecs_topk.cu). Bit-exactness with the CPU rests on three things: the math is
// compression/codec_ops.h's; these files are compiled with --fmad=false
// (kernels/CMakeLists.txt), so no a*b+c becomes an FMA the CPU does not do; and every sum
// runs in the CPU's order (sign's 8 interleaved partial sums, PowerSGD's row and column
// loops, its Gram-Schmidt on one thread). Maxima are order-independent, so those are
// parallel.
#include <cstdint>

#include "compression/codec_ops.h"
#include "compression/powersgd.h"
#include "kernels/codecs.h"
#include "kernels/codecs_common.cuh"

namespace skyring::kernels {
namespace {

namespace ops = compression::ops;
using namespace detail;

// ---- fp16 / bf16

template <bool Half>
__global__ void castEncodeKernel(const float* in, float* residual, std::uint16_t* out,
                                 std::size_t n) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride()) {
    if (residual != nullptr) {
      out[i] = Half ? ops::fp16EncodeEf(in[i], residual[i]) : ops::bf16EncodeEf(in[i], residual[i]);
    } else {
      out[i] = Half ? floatToHalfBits(in[i]) : floatToBf16Bits(in[i]);
    }
  }
}

template <bool Half>
__global__ void castDecodeKernel(const std::uint16_t* in, float* out, std::size_t n) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride())
    out[i] = Half ? halfBitsToFloat(in[i]) : bf16BitsToFloat(in[i]);
}

template <bool Half>
cudaError_t castEncode(const float* in, float* residual, std::byte* payload, std::size_t n,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (!aligned4(payload)) return cudaErrorInvalidValue;
  castEncodeKernel<Half><<<blocksFor(n), kThreads, 0, stream>>>(
      in, residual, reinterpret_cast<std::uint16_t*>(payload), n);
  return cudaGetLastError();
}

template <bool Half>
cudaError_t castDecode(const std::byte* payload, float* out, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (!aligned4(payload)) return cudaErrorInvalidValue;
  castDecodeKernel<Half><<<blocksFor(n), kThreads, 0, stream>>>(
      reinterpret_cast<const std::uint16_t*>(payload), out, n);
  return cudaGetLastError();
}

// ---- int8

// Max over a thread block; the result is valid in thread 0. Max is order-independent, so
// the scale equals the CPU's sequential one.
__device__ std::uint32_t blockMax(std::uint32_t v, std::uint32_t* shared) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const std::uint32_t other = __shfl_down_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w)
      v = shared[w] > v ? shared[w] : v;
  }
  __syncthreads();
  return v;
}

// One thread block per int8 block (grid-stride over blocks).
__global__ void int8ScaleKernel(const float* in, const float* residual, float* scales,
                                std::size_t n, std::size_t block, std::size_t blocks) {
  __shared__ std::uint32_t shared[kThreads / 32];
  for (std::size_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const std::size_t first = b * block;
    const std::size_t end = first + block < n ? first + block : n;
    std::uint32_t acc = 0;
    for (std::size_t i = first + threadIdx.x; i < end; i += blockDim.x)
      acc = ops::maxAbsBits(acc, residual != nullptr ? in[i] + residual[i] : in[i]);
    acc = blockMax(acc, shared);
    if (threadIdx.x == 0) scales[b] = ops::int8Scale(acc);
  }
}

__global__ void int8QuantizeKernel(const float* in, float* residual, const float* scales,
                                   std::int8_t* q, std::size_t n, std::size_t block,
                                   bool stochastic, std::uint64_t key) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride()) {
    const float scale = scales[i / block];
    const float u = stochastic ? ops::uniform01(key, i) : 0.0f;
    if (residual != nullptr) {
      q[i] = ops::int8EncodeEf(in[i], residual[i], scale, stochastic, u);
    } else {
      q[i] = stochastic ? ops::int8QuantizeStochastic(in[i], scale, u)
                        : ops::int8QuantizeRne(in[i], scale);
    }
  }
}

__global__ void int8DequantizeKernel(const float* scales, const std::int8_t* q, float* out,
                                     std::size_t n, std::size_t block) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride())
    out[i] = ops::int8Dequantize(q[i], scales[i / block]);
}

// ---- sign

// Eight lanes per sign block: lane j sums the elements j, j + 8, ... of the block in
// ascending order, which is exactly the CPU's partial sum s[j] (its vector loop and its
// tail alike). The xor butterfly then forms ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)) in lane
// 0 (float addition is commutative bit for bit), so the scale equals the CPU's.
__global__ void signScaleKernel(const float* in, const float* residual, float* scales,
                                std::size_t n, std::size_t block, std::size_t blocks) {
  const std::size_t lane = threadIdx.x % 8;
  const unsigned mask = 0xffu << (threadIdx.x % 32 / 8 * 8);
  for (std::size_t b = firstIndex() / 8; b < blocks; b += gridStride() / 8) {
    const std::size_t first = b * block;
    const std::size_t end = first + block < n ? first + block : n;
    float s = 0.0f;
    for (std::size_t i = first + lane; i < end; i += 8)
      s += ops::absf(in[i] + (residual != nullptr ? residual[i] : 0.0f));
    s += __shfl_xor_sync(mask, s, 1, 8);
    s += __shfl_xor_sync(mask, s, 2, 8);
    s += __shfl_xor_sync(mask, s, 4, 8);
    if (lane == 0) scales[b] = s / static_cast<float>(end - first);
  }
}

// One thread per output byte, so blocks that are not whole bytes need no atomics.
__global__ void signPackKernel(const float* in, float* residual, const float* scales,
                               std::uint8_t* bits, std::size_t n, std::size_t block) {
  const std::size_t bytes = (n + 7) / 8;
  for (std::size_t o = firstIndex(); o < bytes; o += gridStride()) {
    std::uint32_t byte = 0;
    for (std::size_t j = 0; j < 8 && o * 8 + j < n; ++j) {
      const std::size_t e = o * 8 + j;
      const std::uint32_t bit = residual != nullptr
                                    ? ops::signEncodeEf(in[e], residual[e], scales[e / block])
                                    : ops::signBit(in[e]);
      byte |= bit << j;
    }
    bits[o] = static_cast<std::uint8_t>(byte);
  }
}

__global__ void signDecodeKernel(const float* scales, const std::uint8_t* bits, float* out,
                                 std::size_t n, std::size_t block) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride())
    out[i] = ops::signDecode((bits[i / 8] >> (i % 8)) & 1u, scales[i / block]);
}

// ---- PowerSGD, on the rows x cols row-major view of M (the last row may be short).

__device__ std::size_t rowLength(std::size_t count, std::size_t cols, std::size_t i) {
  const std::size_t rest = count - i * cols;
  return rest < cols ? rest : cols;
}

// m = (residual with error feedback, else 0) + in: 0.0f + in, as the CPU's zeroed M does,
// so that -0 becomes +0 the same way.
__global__ void powerSgdLoadKernel(const float* in, float* m, std::size_t n, bool ef) {
  for (std::size_t i = firstIndex(); i < n; i += gridStride())
    m[i] = (ef ? m[i] : 0.0f) + in[i];
}

// A Q column that is all zero (first use, or M of rank below r) is drawn from the seed.
__global__ void powerSgdSeedKernel(float* q, std::size_t cols, std::size_t r, std::uint64_t seed) {
  const std::size_t j = firstIndex();
  if (j >= r) return;
  for (std::size_t c = 0; c < cols; ++c)
    if (q[c * r + j] != 0.0f) return;
  const std::uint64_t key = ops::streamKey(seed, j);
  for (std::size_t c = 0; c < cols; ++c)
    q[c * r + j] = 2.0f * ops::uniform01(key, c) - 1.0f;
}

// p[i][j] = sum over c ascending of M[i][c] q[c][j]: one thread per (i, j).
__global__ void powerSgdPKernel(const float* m, const float* q, float* p, std::size_t count,
                                std::size_t rows, std::size_t cols, std::size_t r) {
  for (std::size_t t = firstIndex(); t < rows * r; t += gridStride()) {
    const std::size_t i = t / r, j = t % r;
    const float* row = m + i * cols;
    float acc = 0.0f;
    for (std::size_t c = 0, len = rowLength(count, cols, i); c < len; ++c)
      acc += row[c] * q[c * r + j];
    p[t] = acc;
  }
}

// The CPU's modified Gram-Schmidt (twice), one thread, same order: P is rows x r, small.
__global__ void powerSgdOrthonormalizeKernel(float* p, std::size_t rows, std::size_t r) {
  for (std::size_t j = 0; j < r; ++j) {
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t l = 0; l < j; ++l) {
        double dot = 0;
        for (std::size_t i = 0; i < rows; ++i)
          dot += static_cast<double>(p[i * r + j]) * p[i * r + l];
        for (std::size_t i = 0; i < rows; ++i)
          p[i * r + j] -= static_cast<float>(dot) * p[i * r + l];
      }
    }
    double norm = 0;
    for (std::size_t i = 0; i < rows; ++i)
      norm += static_cast<double>(p[i * r + j]) * p[i * r + j];
    norm = sqrt(norm);
    const float inv = norm > 1e-30 ? static_cast<float>(1.0 / norm) : 0.0f;
    for (std::size_t i = 0; i < rows; ++i)
      p[i * r + j] *= inv;
  }
}

// q[c][j] = sum over rows i ascending (that reach column c) of M[i][c] p[i][j].
__global__ void powerSgdQKernel(const float* m, const float* p, float* q, std::size_t count,
                                std::size_t rows, std::size_t cols, std::size_t r) {
  for (std::size_t t = firstIndex(); t < cols * r; t += gridStride()) {
    const std::size_t c = t / r, j = t % r;
    float acc = 0.0f;
    for (std::size_t i = 0; i < rows && i * cols + c < count; ++i)
      acc += m[i * cols + c] * p[i * r + j];
    q[t] = acc;
  }
}

// out = P Q^T elementwise; with `m`, the residual update m -= out (or m = 0 without ef).
__global__ void powerSgdExpandKernel(const float* p, const float* q, float* out, float* m, bool ef,
                                     std::size_t count, std::size_t cols, std::size_t r) {
  for (std::size_t e = firstIndex(); e < count; e += gridStride()) {
    const float* pi = p + e / cols * r;
    const float* qc = q + e % cols * r;
    float x = 0.0f;
    for (std::size_t j = 0; j < r; ++j)
      x += pi[j] * qc[j];
    if (out != nullptr) out[e] = x;
    if (m != nullptr) m[e] = ef ? m[e] - x : 0.0f;
  }
}

}  // namespace

cudaError_t fp16Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       cudaStream_t stream) {
  return castEncode<true>(in, residual, payload, count, stream);
}
cudaError_t fp16Decode(const std::byte* payload, float* out, std::size_t count,
                       cudaStream_t stream) {
  return castDecode<true>(payload, out, count, stream);
}
cudaError_t bf16Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       cudaStream_t stream) {
  return castEncode<false>(in, residual, payload, count, stream);
}
cudaError_t bf16Decode(const std::byte* payload, float* out, std::size_t count,
                       cudaStream_t stream) {
  return castDecode<false>(payload, out, count, stream);
}

cudaError_t int8Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       const Int8Params& params, cudaStream_t stream) {
  if (!validBlock(params.block) || !aligned4(payload)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const std::size_t blocks = ceilDiv(count, params.block);
  auto* scales = reinterpret_cast<float*>(payload);
  auto* q = reinterpret_cast<std::int8_t*>(payload + blocks * sizeof(float));
  int8ScaleKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(
      in, residual, scales, count, params.block, blocks);
  SKYRING_CUDA_TRY(cudaGetLastError());
  int8QuantizeKernel<<<blocksFor(count), kThreads, 0, stream>>>(
      in, residual, scales, q, count, params.block, params.stochastic,
      ops::streamKey(params.seed, params.step));
  return cudaGetLastError();
}

cudaError_t int8Decode(const std::byte* payload, float* out, std::size_t count, std::uint32_t block,
                       cudaStream_t stream) {
  if (!validBlock(block) || !aligned4(payload)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const std::size_t blocks = ceilDiv(count, block);
  int8DequantizeKernel<<<blocksFor(count), kThreads, 0, stream>>>(
      reinterpret_cast<const float*>(payload),
      reinterpret_cast<const std::int8_t*>(payload + blocks * sizeof(float)), out, count, block);
  return cudaGetLastError();
}

cudaError_t signEncode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       std::uint32_t block, cudaStream_t stream) {
  if (!validBlock(block) || !aligned4(payload)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const std::size_t blocks = ceilDiv(count, block);
  auto* scales = reinterpret_cast<float*>(payload);
  auto* bits = reinterpret_cast<std::uint8_t*>(payload + blocks * sizeof(float));
  signScaleKernel<<<blocksFor(blocks * 8), kThreads, 0, stream>>>(in, residual, scales, count,
                                                                  block, blocks);
  SKYRING_CUDA_TRY(cudaGetLastError());
  signPackKernel<<<blocksFor(ceilDiv(count, 8)), kThreads, 0, stream>>>(in, residual, scales, bits,
                                                                        count, block);
  return cudaGetLastError();
}

cudaError_t signDecode(const std::byte* payload, float* out, std::size_t count, std::uint32_t block,
                       cudaStream_t stream) {
  if (!validBlock(block) || !aligned4(payload)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const std::size_t blocks = ceilDiv(count, block);
  signDecodeKernel<<<blocksFor(count), kThreads, 0, stream>>>(
      reinterpret_cast<const float*>(payload),
      reinterpret_cast<const std::uint8_t*>(payload + blocks * sizeof(float)), out, count, block);
  return cudaGetLastError();
}

cudaError_t powerSgdEncode(const float* in, float* m, float* q, std::byte* payload,
                           std::size_t count, std::size_t rank, std::uint64_t seed,
                           bool errorFeedback, cudaStream_t stream) {
  if (!aligned4(payload) || rank == 0 || rank > compression::kMaxRank) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) return cudaSuccess;
  const compression::PowerSgdShape s = compression::powerSgdShape(count, rank);
  auto* p = reinterpret_cast<float*>(payload);
  auto* qOut = p + s.pSize();
  powerSgdLoadKernel<<<blocksFor(count), kThreads, 0, stream>>>(in, m, count, errorFeedback);
  SKYRING_CUDA_TRY(cudaGetLastError());
  powerSgdSeedKernel<<<1, kThreads, 0, stream>>>(q, s.cols, s.rank, seed);
  SKYRING_CUDA_TRY(cudaGetLastError());
  powerSgdPKernel<<<blocksFor(s.pSize()), kThreads, 0, stream>>>(m, q, p, count, s.rows, s.cols,
                                                                 s.rank);
  SKYRING_CUDA_TRY(cudaGetLastError());
  powerSgdOrthonormalizeKernel<<<1, 1, 0, stream>>>(p, s.rows, s.rank);
  SKYRING_CUDA_TRY(cudaGetLastError());
  powerSgdQKernel<<<blocksFor(s.qSize()), kThreads, 0, stream>>>(m, p, qOut, count, s.rows, s.cols,
                                                                 s.rank);
  SKYRING_CUDA_TRY(cudaGetLastError());
  powerSgdExpandKernel<<<blocksFor(count), kThreads, 0, stream>>>(
      p, qOut, nullptr, m, errorFeedback, count, s.cols, s.rank);
  SKYRING_CUDA_TRY(cudaGetLastError());
  return cudaMemcpyAsync(q, qOut, s.qSize() * sizeof(float), cudaMemcpyDeviceToDevice, stream);
}

cudaError_t powerSgdDecode(const std::byte* payload, float* out, std::size_t count,
                           std::size_t rank, cudaStream_t stream) {
  if (!aligned4(payload)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const compression::PowerSgdShape s = compression::powerSgdShape(count, rank);
  if (s.rank != rank) return cudaErrorInvalidValue;
  const auto* p = reinterpret_cast<const float*>(payload);
  powerSgdExpandKernel<<<blocksFor(count), kThreads, 0, stream>>>(p, p + s.pSize(), out, nullptr,
                                                                  false, count, s.cols, s.rank);
  return cudaGetLastError();
}

}  // namespace skyring::kernels
