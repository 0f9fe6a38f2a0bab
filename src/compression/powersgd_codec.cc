// "powersgd:R" on one rank: the three phases of powersgd.h with no allreduce between
// them. Payload: P (rows x rank f32, row-major), then Q (cols x rank f32); the header's
// param is the rank used, rows and cols follow from the count (powersgd.h).
#include "compression/codecs.h"

#include <cstdint>
#include "compression/powersgd.h"

namespace skyring::compression {
namespace {

class PowerSgdCodec final : public Compressor {
 public:
  explicit PowerSgdCodec(const CompressionOptions& o) : Compressor(o) {}
  bool linear() const noexcept override { return false; }
  std::size_t maxEncodedBytes(std::size_t count) const override {
    const PowerSgdShape s = powerSgdShape(count, options().rank);
    return kHeaderBytes + (s.pSize() + s.qSize()) * sizeof(float);
  }

 private:
  Encoded encodePayload(std::span<const float> in, float*, CompressorState& state,
                        std::span<std::byte> payload) const override {
    const PowerSgdShape s = powerSgdShape(in.size(), options().rank);
    state.p.resize(s.pSize());
    std::vector<float> q(s.qSize());
    std::vector<float> approx(in.size());
    powerSgdComputeP(in, errorFeedback(), s, state, state.p);
    powerSgdComputeQ(s, state, state.p, q);
    powerSgdDecompress(errorFeedback(), s, state, state.p, q, approx);
    storeFloats(payload.data(), state.p.data(), s.pSize());
    storeFloats(payload.data() + s.pSize() * sizeof(float), q.data(), s.qSize());
    return {(s.pSize() + s.qSize()) * sizeof(float), static_cast<std::uint32_t>(s.rank), 0};
  }

  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    const PowerSgdShape s = powerSgdShape(out.size(), h.param);
    SKYRING_CHECK_ARG(s.rank == h.param, {}, "powersgd rank ", h.param,
                      " in header is invalid for ", out.size(), " elements");
    checkPayloadSize(h, payload.size(), (s.pSize() + s.qSize()) * sizeof(float));
    std::vector<float> p(s.pSize()), q(s.qSize());
    loadFloats(p.data(), payload.data(), p.size());
    loadFloats(q.data(), payload.data() + p.size() * sizeof(float), q.size());
    powerSgdExpand(s, p, q, out);
  }
};

}  // namespace

std::unique_ptr<Compressor> makePowerSgdCodec(const CompressionOptions& o) {
  return std::make_unique<PowerSgdCodec>(o);
}

}  // namespace skyring::compression
