// The communicator's codecs and per-tensor codec state (Communicator::CompressionCache),
// shared by communicator.cc and compressed_segments.cc. Internal.
//
// Threads: the maps are guarded by mutex; a state found there is used by the one call
// (one thread, one tag) that compresses its tensor. Node-based maps, so references to
// states stay valid while others are added.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "collectives/compressed_allreduce.h"
#include "skyring/communicator.h"
#include "skyring/compression.h"

namespace skyring {

struct Communicator::CompressionCache {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<compression::Compressor>, std::less<>> codecs;
  // (spec, tensor key, count) -> state of a whole buffer (CollectiveOptions::tensorKey).
  std::map<std::tuple<std::string, std::uint64_t, std::size_t>, collectives::TensorCompressionState>
      tensors;
  // The same for calls through the node level (node_level.h), whose pieces differ.
  std::map<std::tuple<std::string, std::uint64_t, std::size_t>, collectives::TensorCompressionState>
      nodeTensors;
  // (spec, tensor name) -> state of one tensor of fused buffers (CollectiveOptions::segments).
  std::map<std::pair<std::string, std::string>, collectives::SegmentCodecState> segments;
};

namespace collectives {

// Checks that segments lie in order and cover count elements exactly, each with a name
// and, when it has a shape, as many elements as the shape says. Throws InvalidArgument.
void checkSegments(std::span<const TensorSegment> segments, std::size_t count,
                   const ErrorContext& ctx);

}  // namespace collectives
}  // namespace skyring
