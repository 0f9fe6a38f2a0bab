// The coordinator's wire format (internal; docs/coordinator.md has the same tables): the
// frames a cluster leader and the coordinator exchange, their encoders, an incremental
// frame decoder and one parser per message.
//
// Frame (little-endian, kFrameHeaderBytes = 16, then `length` bytes of payload):
//   offset  size  field
//   0       4     magic "SKCO"
//   4       1     version (kWireVersion; a frame of another version is refused)
//   5       1     type (FrameType)
//   6       2     flags (none defined: any bit set is refused)
//   8       4     payload length (at most the decoder's maxPayload)
//   12      4     CRC32C of bytes [0, 12) followed by the payload
// The model is never limited by a frame: a submission is streamed as many submit-chunk
// frames, each carrying a compression-layer blob (include/skyring/compression.h) of a
// slice of the elements, so the size a peer may announce is bounded, the model is not.
//
// Strings are a u16 length and that many bytes (at most kMaxNameBytes for names and
// kMaxReasonBytes for reasons). Every parser checks that the payload has exactly the bytes
// its message needs, nothing missing and nothing left over.
//
// Failure: bytes from the network are untrusted; the decoder and the parsers throw
// TransportError (op "coordinator wire") naming what was wrong (magic, version, length,
// CRC, a truncated or oversized field). After a throw the decoder refuses all further
// input: the connection is to be closed, since the stream has lost its framing.
//
// Threads: a FrameDecoder belongs to one connection and one thread at a time; the free
// functions are pure.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace skyring::coordinator::wire {

inline constexpr std::array<char, 4> kMagic = {'S', 'K', 'C', 'O'};
inline constexpr std::uint8_t kWireVersion = 1;
inline constexpr std::size_t kFrameHeaderBytes = 16;
// Default largest payload a decoder accepts (a chunk of 4 MiB plus its fields).
inline constexpr std::size_t kDefaultMaxPayload = (std::size_t{4} << 20) + 64;
inline constexpr std::size_t kMaxNameBytes = 128;
inline constexpr std::size_t kMaxReasonBytes = 1024;
inline constexpr std::size_t kNonceBytes = 32;
inline constexpr std::size_t kMacBytes = 32;
using Nonce = std::array<std::byte, kNonceBytes>;
using Mac = std::array<std::byte, kMacBytes>;

enum class FrameType : std::uint8_t {
  challenge = 1,     // S->C on connect: the server's nonce
  hello = 2,         // C->S: cluster name, client nonce, proof of the job token
  welcome = 3,       // S->C: accepted; open round, element count, the server's proof
  submitBegin = 4,   // C->S: a submission of round r starts
  submitChunk = 5,   // C->S: elements [offset, offset + n) as one compression blob
  submitEnd = 6,     // C->S: the submission is complete
  fetch = 7,         // C->S: send the global weights after round r
  weights = 8,       // S->C: a slice of the global weights (f32), one of several
  status = 9,        // C->S: ask about round r
  roundStatus = 10,  // S->C: the answer to status, submitEnd and fetch-too-early
  error = 11,        // either way: a refusal with a reason; the sender then closes
  late = 12,         // S->C: the submission's round is closed (dropped or carried)
};
inline constexpr std::uint8_t kMaxFrameType = 12;

// Codec of a submission: the compression layer's ids of the codecs the coordinator takes.
enum class SubmitCodec : std::uint8_t { none = 0, fp16 = 1, bf16 = 2, int8 = 3 };

struct Frame {
  FrameType type = FrameType::error;
  std::vector<std::byte> payload;
};

struct Challenge {
  Nonce serverNonce{};
};
struct Hello {
  std::string cluster;
  Nonce clientNonce{};
  Mac proof{};
};
struct Welcome {
  std::uint64_t round = 0;  // the open round
  std::uint64_t count = 0;  // elements of the model
  Mac proof{};
};
struct SubmitBegin {
  std::uint64_t round = 0;
  SubmitCodec codec = SubmitCodec::none;
  std::uint64_t count = 0;    // elements of the pseudo-gradient (must be the model's)
  std::uint64_t samples = 0;  // the submission's weight in the average (> 0)
};
// blob: a compression-layer encoding (header and payload) of `header.count` elements.
struct SubmitChunk {
  std::uint64_t offset = 0;         // first element
  std::span<const std::byte> blob;  // borrowed from the frame's payload
};
struct SubmitEnd {
  std::uint64_t round = 0;
};
struct Fetch {
  std::uint64_t round = 0;   // weights after this round was applied
  std::uint64_t offset = 0;  // first element wanted
};
struct Weights {
  std::uint64_t round = 0;
  std::uint64_t offset = 0;           // first element of this slice
  std::uint64_t total = 0;            // elements of the model
  std::span<const std::byte> values;  // f32 little-endian, borrowed from the payload
};
struct Status {
  std::uint64_t round = 0;
};
enum class RoundState : std::uint8_t { open = 0, closed = 1, future = 2 };
struct RoundStatus {
  std::uint64_t round = 0;    // the round asked about
  std::uint64_t current = 0;  // the open round
  RoundState state = RoundState::open;
  bool counted = false;  // the asking cluster's submission of `round` is counted
  std::uint32_t submitted = 0;
  std::uint32_t quorum = 0;
  std::uint32_t members = 0;
};
enum class ErrorCode : std::uint16_t {
  badFrame = 1,      // undecodable input
  badVersion = 2,    // another wire version
  unauthorized = 3,  // the proof is wrong (another token, or none)
  badRequest = 4,    // a message out of place or with bad fields (size mismatch, ...)
  overloaded = 5,    // too many connections or submissions
  internal = 6,
};
struct ErrorMessage {
  ErrorCode code = ErrorCode::badRequest;
  std::string reason;
};
enum class LateDisposition : std::uint8_t { dropped = 0, carried = 1 };
struct Late {
  std::uint64_t round = 0;    // the submission's round
  std::uint64_t current = 0;  // the open round
  LateDisposition disposition = LateDisposition::dropped;
};

// A whole frame: header (with CRC) and payload.
std::vector<std::byte> encodeFrame(FrameType type, std::span<const std::byte> payload);

std::vector<std::byte> encode(const Challenge& m);
std::vector<std::byte> encode(const Hello& m);
std::vector<std::byte> encode(const Welcome& m);
std::vector<std::byte> encode(const SubmitBegin& m);
std::vector<std::byte> encode(const SubmitChunk& m);
std::vector<std::byte> encode(const SubmitEnd& m);
std::vector<std::byte> encode(const Fetch& m);
std::vector<std::byte> encode(const Weights& m);
std::vector<std::byte> encode(const Status& m);
std::vector<std::byte> encode(const RoundStatus& m);
std::vector<std::byte> encode(const ErrorMessage& m);
std::vector<std::byte> encode(const Late& m);

// Parsers of a decoded frame's payload; each throws TransportError unless the frame has
// its type and exactly its fields. Spans in the result borrow from frame.payload.
Challenge parseChallenge(const Frame& frame);
Hello parseHello(const Frame& frame);
Welcome parseWelcome(const Frame& frame);
SubmitBegin parseSubmitBegin(const Frame& frame);
SubmitChunk parseSubmitChunk(const Frame& frame);
SubmitEnd parseSubmitEnd(const Frame& frame);
Fetch parseFetch(const Frame& frame);
Weights parseWeights(const Frame& frame);
Status parseStatus(const Frame& frame);
RoundStatus parseRoundStatus(const Frame& frame);
ErrorMessage parseError(const Frame& frame);
Late parseLate(const Frame& frame);

// Turns a byte stream into frames. feed() as bytes arrive (any split), then next() until
// it says there is no whole frame yet. The header is judged as soon as its bytes are in
// (magic even on the first byte), so garbage or an oversized length is refused before its
// payload is waited for or buffered: memory stays within maxPayload + a header.
class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t maxPayload = kDefaultMaxPayload);

  // Appends bytes; throws TransportError when what is buffered cannot be a frame.
  void feed(std::span<const std::byte> bytes);
  // Moves the next whole frame into out; false when more bytes are needed. Throws
  // TransportError on a CRC mismatch.
  bool next(Frame& out);
  // Bytes buffered that are not yet a whole frame (a peer closing now truncated a frame).
  std::size_t pending() const noexcept { return buffer_.size() - start_; }
  std::size_t maxPayload() const noexcept { return maxPayload_; }

 private:
  void check();  // validates the header once its bytes are in; poisons on failure
  [[noreturn]] void fail(const std::string& why);

  std::size_t maxPayload_;
  std::vector<std::byte> buffer_;
  std::size_t start_ = 0;  // first byte of the frame being assembled
  bool failed_ = false;
  std::string failure_;
};

}  // namespace skyring::coordinator::wire
