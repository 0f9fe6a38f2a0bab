// "none": the f32 values as they are. Payload: count * 4 bytes. Error feedback, if asked
// for, is exact and leaves the residual at zero.
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

class NoneCodec final : public Compressor {
 public:
  explicit NoneCodec(const CompressionOptions& o) : Compressor(o) {}
  bool linear() const noexcept override { return true; }
  std::size_t maxEncodedBytes(std::size_t count) const override {
    return kHeaderBytes + count * sizeof(float);
  }

 private:
  Encoded encodePayload(std::span<const float> in, float* residual, CompressorState&,
                        std::span<std::byte> payload) const override {
    if (residual == nullptr) {
      storeFloats(payload.data(), in.data(), in.size());
    } else {
      for (std::size_t i = 0; i < in.size(); ++i) {
        const float v = in[i] + residual[i];
        std::memcpy(payload.data() + i * sizeof(float), &v, sizeof v);
        residual[i] = 0.0f;
      }
    }
    return {in.size() * sizeof(float), 0, 0};
  }
  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    checkPayloadSize(h, payload.size(), out.size() * sizeof(float));
    loadFloats(out.data(), payload.data(), out.size());
  }
};

}  // namespace

std::unique_ptr<Compressor> makeNoneCodec(const CompressionOptions& o) {
  return std::make_unique<NoneCodec>(o);
}

}  // namespace skyring::compression
