// CUDA twins of the codecs in src/compression: the payload of every codec (the bytes after
// the 24-byte header, which the caller writes on the host, e.g. with the CPU codec's
// header for the same options) produced and read on the device. Encoding fuses error
// feedback exactly like the CPU: v = input + residual, send C(v), residual = v - D(C(v)).
// The per-element math is compression/codec_ops.h, shared with the CPU codecs, and this
// file is compiled without FMA contraction, so that every codec's payload, residual and
// decoded output equal the CPU's bit for bit (docs/compression.md, "CUDA twins").
//
// Memory. Every pointer is device (or managed) memory. `payload` must be 4-byte aligned
// (the header is 24 bytes, so a cudaMalloc'ed buffer + kHeaderBytes is). `residual` is
// null when error feedback is off; otherwise it holds count floats and is updated.
//
// Streams and errors. The elementwise codecs (fp16, bf16, int8, sign) and PowerSGD only
// launch on `stream` and return the launch status. topkEncode and topkDecode allocate
// stream-ordered scratch memory and synchronise `stream` once, because the payload size
// (topk's index width) is data-dependent and the host needs it. cudaErrorInvalidValue
// means bad arguments or, for the decoders that check, a corrupt payload.
//
// Thread-safety: calls on different buffers may run concurrently from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace skyring::kernels {

// ---- fp16 / bf16: payload = count 16-bit words (round to nearest even).
cudaError_t fp16Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       cudaStream_t stream);
cudaError_t fp16Decode(const std::byte* payload, float* out, std::size_t count,
                       cudaStream_t stream);
cudaError_t bf16Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       cudaStream_t stream);
cudaError_t bf16Decode(const std::byte* payload, float* out, std::size_t count,
                       cudaStream_t stream);

// ---- int8: payload = ceil(count / block) f32 scales, then count int8 values. Stochastic
// rounding draws from the counter RNG keyed by (seed, step), as the CPU does with
// CompressorState::seed and the state's step before the encode call.
struct Int8Params {
  std::uint32_t block = 256;
  bool stochastic = false;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
};
cudaError_t int8Encode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       const Int8Params& params, cudaStream_t stream);
cudaError_t int8Decode(const std::byte* payload, float* out, std::size_t count, std::uint32_t block,
                       cudaStream_t stream);

// ---- sign: payload = ceil(count / block) f32 scales (mean |v|, summed in the CPU's order),
// then ceil(count / 8) bytes of sign bits, element i in bit i % 8 of byte i / 8.
cudaError_t signEncode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       std::uint32_t block, cudaStream_t stream);
cudaError_t signDecode(const std::byte* payload, float* out, std::size_t count, std::uint32_t block,
                       cudaStream_t stream);

// ---- topk: payload = u32 width | k f32 values (ascending index) | k index deltas packed
// LSB first in `width` bits. k is the CPU's (header param: clamp(round(fraction * n), 1,
// n)), 1 <= k <= count < 2^32, or k = 0 for count = 0. The selection is the CPU's exact
// ranking (magnitude, ties to the lower index); the CPU's sampled mode selects the same
// set, so the payload is the same whichever mode the CPU used. On success *payloadBytes
// is the payload size (4 + 4k + ceil(k * width / 8)) and the stream is synchronised.
cudaError_t topkEncode(const float* in, float* residual, std::byte* payload, std::size_t count,
                       std::size_t k, std::size_t* payloadBytes, cudaStream_t stream);
// payloadBytes is the size of the payload as received; it, the width and every index are
// checked against count and k (cudaErrorInvalidValue when corrupt). Synchronises stream.
cudaError_t topkDecode(const std::byte* payload, std::size_t payloadBytes, float* out,
                       std::size_t count, std::size_t k, cudaStream_t stream);

// ---- PowerSGD (single rank): payload = P (rows x rank f32), then Q (cols x rank f32),
// with the CPU's shape (compression/powersgd.h powerSgdShape(count, rank)). State mirrors
// CompressorState: `m` (count floats) is the residual with error feedback and scratch for
// M without; `q` (cols x rank, rank = the shape's) is the warm start. Both are zero before
// the first call; Q columns that are zero are drawn from `seed`, as on the CPU.
cudaError_t powerSgdEncode(const float* in, float* m, float* q, std::byte* payload,
                           std::size_t count, std::size_t rank, std::uint64_t seed,
                           bool errorFeedback, cudaStream_t stream);
// rank is the header's param (the rank used).
cudaError_t powerSgdDecode(const std::byte* payload, float* out, std::size_t count,
                           std::size_t rank, cudaStream_t stream);

}  // namespace skyring::kernels
