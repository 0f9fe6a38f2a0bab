// The engine's allgather of one named tensor whose first dimension differs between ranks:
// every rank's rows, in rank order, into a tensor the caller's allocator returns.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include "engine/negotiation.h"
#include "skyring/communicator.h"
#include "skyring/engine.h"

namespace skyring::engine {

// Runs the collective (padded to the largest first dimension, as Communicator::allgather
// takes equal blocks: one allgather of firstDims.size() * max rows) through scratch, then
// asks allocate for the output and copies every rank's rows into it. Throws what the
// collective throws (a failed group: the engine stops); returns the error of this rank's
// allocator (it threw, or its tensor does not fit), which fails only this handle.
std::exception_ptr runAllgather(Communicator& comm, const CollectiveOptions& options,
                                const Descriptor& descriptor, const BufferView& input,
                                const std::vector<std::int64_t>& firstDims,
                                const Engine::Allocator& allocate, std::vector<std::byte>& scratch);

// Throws InvalidArgument unless `out`, what a caller's allocator returned for the name of
// `descriptor`, holds exactly `want` elements of its dtype in host memory. (Allgather,
// reducescatter and alltoall hand their results to allocators.)
void checkAllocated(const Tensor& out, const Descriptor& descriptor, std::size_t want,
                    const ErrorContext& ctx);

}  // namespace skyring::engine
