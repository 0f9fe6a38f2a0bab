#include "engine/gather.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "skyring/error.h"

namespace skyring::engine {

std::exception_ptr runAllgather(Communicator& comm, const CollectiveOptions& options,
                                const Descriptor& descriptor, const BufferView& input,
                                const std::vector<std::int64_t>& firstDims,
                                const Engine::Allocator& allocate,
                                std::vector<std::byte>& scratch) {
  const auto n = firstDims.size();
  std::size_t rowElems = 1;
  for (std::size_t i = 1; i < descriptor.shape.size(); ++i)
    rowElems *= static_cast<std::size_t>(descriptor.shape[i]);
  const std::size_t rowBytes = rowElems * dtypeSize(descriptor.dtype);
  const auto maxRows =
      static_cast<std::size_t>(*std::max_element(firstDims.begin(), firstDims.end()));
  const auto totalRows = std::accumulate(firstDims.begin(), firstDims.end(), std::int64_t{0});
  const std::size_t block = maxRows * rowBytes;

  // scratch: this rank's block, then every rank's.
  if (block > 0) {
    if (scratch.size() < block * (n + 1)) scratch.resize(block * (n + 1));
    std::memcpy(scratch.data(), input.data, input.bytes());
    const BufferView mine{scratch.data(), block, DType::u8, MemoryKind::host};
    const BufferView all{scratch.data() + block, block * n, DType::u8, MemoryKind::host};
    comm.allgather(mine, all, options);
  }

  const ErrorContext ctx{comm.rank(), -1, "allgatherAsync"};
  try {
    const Tensor out = allocate(totalRows);
    const std::size_t want = static_cast<std::size_t>(totalRows) * rowElems;
    checkAllocated(out, descriptor, want, ctx);
    auto* dst = static_cast<std::byte*>(out.buffer.data);
    for (std::size_t r = 0; r < n; ++r) {
      const std::size_t bytes = static_cast<std::size_t>(firstDims[r]) * rowBytes;
      if (bytes > 0) std::memcpy(dst, scratch.data() + block * (r + 1), bytes);
      dst += bytes;
    }
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

void checkAllocated(const Tensor& out, const Descriptor& descriptor, std::size_t want,
                    const ErrorContext& ctx) {
  if (out.buffer.memory != MemoryKind::host || out.buffer.dtype != descriptor.dtype ||
      out.buffer.count != want || (want > 0 && out.buffer.data == nullptr)) {
    SKYRING_THROW(InvalidArgument, ctx, "'", descriptor.name, "': the allocator returned ",
                  out.buffer.count, " x ", dtypeName(out.buffer.dtype),
                  out.buffer.memory == MemoryKind::host ? "" : " in device memory", ", not ", want,
                  " x ", dtypeName(descriptor.dtype), " in host memory");
  }
}

}  // namespace skyring::engine
