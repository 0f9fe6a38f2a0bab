// Gradient compression: codecs that turn an f32 tensor into a smaller versioned byte
// string and back, with per-tensor state (error-feedback residual, PowerSGD factors).
//
// Semantics. `encode` compresses v = input + residual (the residual only when error
// feedback is on), writes a header and a payload, and sets residual = v - decode(bytes):
// what was not sent this step is added to the next. So over T steps the sum of what was
// decoded plus the final residual equals the sum of the inputs (up to float rounding).
// Only f32 input is supported: gradients of f16/bf16 models are widened by the caller.
//
// Ownership. A Compressor is immutable after construction and owns nothing per tensor;
// the caller owns one CompressorState per tensor (made by makeState) and the input and
// output buffers, which are borrowed for the duration of a call only.
//
// Thread-safety. All Compressor methods are const and may run concurrently, on the same
// or different Compressor objects, as long as each CompressorState is used by one
// thread at a time.
//
// Failure. Bad arguments (spec, sizes, a state made for another count) and corrupt or
// mismatched encoded bytes throw InvalidArgument. encode checks everything before it
// writes, so a throwing encode leaves state and output unchanged; a decode that throws
// on a corrupt payload may have written part of its output.
//
// Wire format (version 1, little-endian, kHeaderBytes = 24):
//   offset  size  field
//   0       4     magic "SKRC" (bytes 'S','K','R','C')
//   4       1     version (1)
//   5       1     codec id (Codec)
//   6       2     flags (WireFlags; unknown bits are rejected)
//   8       8     element count
//   16      4     codec parameter: block size (int8, sign), k (topk), rank (powersgd), 0
//   20      4     FNV-1a 32 of bytes [0, 20)
// followed by the codec's payload; docs/compression.md gives each payload's layout and size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace skyring::compression {

enum class Codec : std::uint8_t {
  none = 0,
  fp16 = 1,
  bf16 = 2,
  int8 = 3,
  sign = 4,
  topk = 5,
  powersgd = 6
};

std::string_view codecName(Codec codec) noexcept;

inline constexpr std::size_t kHeaderBytes = 24;
inline constexpr std::uint8_t kWireVersion = 1;

enum WireFlags : std::uint16_t {
  kFlagStochastic = 1u << 0,     // int8 values were rounded stochastically
  kFlagErrorFeedback = 1u << 1,  // the sender applied error feedback (informational)
  kFlagSampled = 1u << 2,        // topk selected through a sampled threshold
};

struct WireHeader {
  Codec codec = Codec::none;
  std::uint16_t flags = 0;
  std::uint64_t count = 0;
  std::uint32_t param = 0;
};

// Reads and validates the header at the start of `bytes` (magic, version, checksum, codec
// id, flags); throws InvalidArgument on any mismatch.
WireHeader readHeader(std::span<const std::byte> bytes);

// Everything a codec needs; parseCompressionSpec() builds one from a string.
struct CompressionOptions {
  Codec codec = Codec::none;
  std::uint32_t blockSize = 0;  // int8, sign: elements per scale; 0 = codec default
  bool stochastic = false;      // int8: stochastic instead of nearest-even rounding
  double topkFraction = 0.01;   // topk: fraction of elements sent, in (0, 1]
  bool topkSampled = false;     // topk: find candidates through a sampled threshold
  std::uint32_t rank = 4;       // powersgd: rank of the approximation
  // Error feedback; unset = the codec's default (on for topk, powersgd, sign).
  std::optional<bool> errorFeedback;
  // Momentum compression (docs/compression.md), applied by the collective layer around the
  // codec for calls of a named tensor: each rank compresses its local heavy-ball momentum
  // u = B u + g instead of g, and hands back g' = m_t - B m_(t-1) of the decoded momentum
  // m, so that an optimizer with momentum B ends with velocity m exactly. 0: off. Unset =
  // the codec's default (kSignMomentum, kTopkMomentum, kPowerSgdMomentum; 0 for others).
  std::optional<double> momentum;
};

inline constexpr double kSignMomentum = 0.9;
inline constexpr double kTopkMomentum = 0.0;
inline constexpr double kPowerSgdMomentum = 0.0;

inline constexpr std::uint32_t kDefaultInt8Block = 256;
inline constexpr std::uint32_t kDefaultSignBlock = 1024;
inline constexpr std::uint32_t kMaxBlock = 1u << 24;
inline constexpr std::uint32_t kMaxRank = 256;

// Grammar (docs/compression.md):
//   spec  := codec [ ":" arg { "," arg } ]
//   arg   := value | key "=" value | flag
//   none | fp16 | bf16 | int8[:block=N][,stochastic] | sign[:block=N]
//   | topk[:FRACTION][,sampled] | powersgd[:RANK]      plus, for all: ef=0|1, momentum=B
// e.g. "int8:block=128,stochastic", "topk:0.001,sampled,ef=0", "powersgd:4".
// Throws InvalidArgument naming the bad part and listing the valid names.
CompressionOptions parseCompressionSpec(std::string_view spec);
// The canonical spec of options (parseCompressionSpec(formatSpec(o)) gives o back).
std::string formatSpec(const CompressionOptions& options);

// Per-tensor state, owned by the caller, made by Compressor::makeState. Fields are public
// so that a CUDA twin can mirror them; codecs alone write them.
struct CompressorState {
  std::size_t count = 0;        // elements of the tensor this state belongs to
  std::uint64_t seed = 0;       // RNG seed: stochastic rounding, topk sampling, PowerSGD's Q0
  std::uint64_t step = 0;       // encode calls so far; part of every RNG counter
  std::vector<float> residual;  // error feedback (count floats), empty when off
  std::vector<float> p, q;      // PowerSGD factors (rows x rank, cols x rank, row-major)
  std::vector<std::uint64_t> scratch;  // topk selection keys, kept to avoid reallocating
};

class Compressor {
 public:
  virtual ~Compressor() = default;
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  const CompressionOptions& options() const noexcept { return options_; }
  Codec codec() const noexcept { return options_.codec; }
  bool errorFeedback() const noexcept { return *options_.errorFeedback; }
  double momentum() const noexcept { return *options_.momentum; }
  std::string spec() const { return formatSpec(options_); }

  // True when encoded values of several ranks may be summed in the codec's own domain
  // (elementwise, same positions) and decoded once: none, fp16, bf16. PowerSGD sums its
  // factors through the phases of powersgd.h instead, so its single-shot bytes are not.
  virtual bool linear() const noexcept = 0;
  // Upper bound of encode's result for count elements, header included; exact for all
  // codecs but topk, whose index width depends on the data.
  virtual std::size_t maxEncodedBytes(std::size_t count) const = 0;

  // A fresh state for a tensor of count elements. PowerSGD ranks must share the seed.
  CompressorState makeState(std::size_t count, std::uint64_t seed = 0) const;

  // Compresses input (plus the residual) into out, which must hold maxEncodedBytes(
  // input.size()) bytes; returns the bytes written. Updates state (residual, step).
  std::size_t encode(std::span<const float> input, CompressorState& state,
                     std::span<std::byte> out) const;
  // Decodes bytes made by encode of the same codec into out (out.size() == count).
  void decode(std::span<const std::byte> bytes, std::span<float> out) const;

 protected:
  explicit Compressor(CompressionOptions options) : options_(std::move(options)) {}

  struct Encoded {
    std::size_t bytes = 0;  // payload bytes written
    std::uint32_t param = 0;
    std::uint16_t flags = 0;
  };

 private:
  // residual is null when error feedback is off. payload has room for the maximum.
  virtual Encoded encodePayload(std::span<const float> input, float* residual,
                                CompressorState& state, std::span<std::byte> payload) const = 0;
  // header is validated for codec and count; the payload size is the codec's to check.
  virtual void decodePayload(const WireHeader& header, std::span<const std::byte> payload,
                             std::span<float> out) const = 0;

  CompressionOptions options_;
};

// Builds a compressor from a spec string or options (validated; see parseCompressionSpec).
std::unique_ptr<Compressor> makeCompressor(std::string_view spec);
std::unique_ptr<Compressor> makeCompressor(const CompressionOptions& options);

// The size rule (docs/compression.md): whether a tensor of this shape (empty: 1-D of
// count elements) gains from codec, so that the callers that fuse tensors (the engine)
// send the others in full precision. PowerSGD: a matrix of at least two dimensions whose
// factors, (rows + cols) x rank floats, are at most half its size (PyTorch's hook's
// min_compression_rate of 2); 1-D tensors (biases, norms) never. Elementwise codecs: the
// encoding, header included, at most kMaxEncodedShare of the f32 bytes. none: never.
inline constexpr double kMaxEncodedShare = 2.0 / 3.0;
bool worthCompressing(const Compressor& codec, std::size_t count,
                      std::span<const std::int64_t> shape);

// Decodes bytes of any codec, read from their header.
void decodeAny(std::span<const std::byte> bytes, std::span<float> out);

}  // namespace skyring::compression
