// Which engine tensors are compressed (docs/engine.md, "Compression"): only those whose
// AllreduceSpec asks for a codec, of f32 sum or avg, and that the size rule finds worth it;
// each keeps its codec state under its own name in the communicator, also inside a fused
// buffer (CollectiveOptions::segments).
#include "engine/engine_impl.h"

#include <cstdint>

namespace skyring {

std::string Engine::Impl::resolveCompression(const AllreduceSpec& spec, const engine::Descriptor& d,
                                             const ErrorContext& ctx) const {
  if (spec.compression.empty()) return {};
  // Checked even where it never applies, so that a typo fails where it is written.
  const std::string_view wanted =
      spec.compression == kDefaultCompression ? comm.config().compression : spec.compression;
  std::unique_ptr<compression::Compressor> codec;
  try {
    codec = compression::makeCompressor(wanted);
  } catch (const InvalidArgument& e) {
    SKYRING_THROW(InvalidArgument, ctx, "'", d.name, "': compression '", spec.compression,
                  "': ", e.detail());
  }
  const bool applies = d.dtype == DType::f32 && (d.op == ReduceOp::sum || d.op == ReduceOp::avg);
  if (!applies || codec->codec() == compression::Codec::none) return {};
  return codec->spec();
}

namespace {

// The shape of d's tensor, or of member `member` of a group ([count, per member its number
// of dimensions and its dimensions]).
std::vector<std::int64_t> shapeOf(const engine::Descriptor& d, int member) {
  if (member < 0) return d.shape;
  std::size_t i = 1;
  for (int m = 0; i < d.shape.size(); ++m) {
    const auto dims = static_cast<std::size_t>(d.shape[i]);
    if (m == member) {
      return {d.shape.begin() + static_cast<std::ptrdiff_t>(i + 1),
              d.shape.begin() + static_cast<std::ptrdiff_t>(i + 1 + dims)};
    }
    i += 1 + dims;
  }
  return {};
}

}  // namespace

std::string Engine::Impl::codecOf(const engine::Descriptor& d, int member) {
  if (d.compression.empty()) return {};
  const std::vector<std::int64_t> shape = shapeOf(d, member);
  std::size_t count = 1;
  for (std::int64_t dim : shape)
    count *= static_cast<std::size_t>(dim);
  auto it = codecs.find(d.compression);
  if (it == codecs.end()) {
    it = codecs.emplace(d.compression, compression::makeCompressor(d.compression)).first;
  }
  if (!compression::worthCompressing(*it->second, count, shape)) return {};
  return d.compression;
}

void Engine::Impl::chooseCodec(engine::Part& part, const engine::Descriptor& d, int member) {
  part.codec = codecOf(d, member);
  if (part.codec.empty()) return;
  part.name = member >= 0 ? d.name + "[" + std::to_string(member) + "]" : d.name;
  part.shape = shapeOf(d, member);
}

}  // namespace skyring
