// Which engine tensors are compressed (docs/engine.md, "Compression"): only those whose
// AllreduceSpec asks for a codec, of f32 sum or avg, and that the size rule finds worth it;
// each keeps its codec state under its own name in the communicator, also inside a fused
// buffer (CollectiveOptions::segments).
#include "engine/engine_impl.h"

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

void Engine::Impl::chooseCodec(engine::Part& part, const engine::Descriptor& d, int member) {
  if (d.compression.empty()) return;
  std::vector<std::int64_t> shape = d.shape;
  if (member >= 0) {  // [count, per member its number of dimensions and its dimensions]
    std::size_t i = 1;
    for (int m = 0; i < d.shape.size(); ++m) {
      const auto dims = static_cast<std::size_t>(d.shape[i]);
      if (m == member) {
        shape.assign(d.shape.begin() + static_cast<std::ptrdiff_t>(i + 1),
                     d.shape.begin() + static_cast<std::ptrdiff_t>(i + 1 + dims));
        break;
      }
      i += 1 + dims;
    }
  }
  auto it = codecs.find(d.compression);
  if (it == codecs.end()) {
    it = codecs.emplace(d.compression, compression::makeCompressor(d.compression)).first;
  }
  if (!compression::worthCompressing(*it->second, part.buffer.count, shape)) return;
  part.codec = d.compression;
  part.name = member >= 0 ? d.name + "[" + std::to_string(member) + "]" : d.name;
  part.shape = std::move(shape);
}

}  // namespace skyring
