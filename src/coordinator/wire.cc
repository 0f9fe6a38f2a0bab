// The coordinator's frames: encoding, the incremental decoder and the parsers (wire.h).
#include "coordinator/wire.h"

#include <algorithm>
#include <cstring>

#include "coordinator/crc32c.h"
#include "skyring/error.h"

namespace skyring::coordinator::wire {
namespace {

const ErrorContext kCtx{-1, -1, "coordinator wire"};

// Appends little-endian fields.
class Writer {
 public:
  void bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void u8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u16(std::uint16_t v) { le(v); }
  void u32(std::uint32_t v) { le(v); }
  void u64(std::uint64_t v) { le(v); }
  void text(const std::string& s, std::size_t max, const char* what) {
    SKYRING_CHECK_ARG(s.size() <= max, kCtx, what, " of ", s.size(), " bytes exceeds ", max);
    u16(static_cast<std::uint16_t>(s.size()));
    bytes(std::as_bytes(std::span(s.data(), s.size())));
  }
  std::vector<std::byte> frame(FrameType type) { return encodeFrame(type, out_); }

 private:
  template <typename T>
  void le(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i)
      u8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::byte> out_;
};

// Reads little-endian fields of one frame's payload; any read past the end, and any byte
// left over at finish(), is a TransportError naming the message.
class Reader {
 public:
  Reader(const Frame& frame, FrameType want, const char* name) : in_(frame.payload), name_(name) {
    if (frame.type != want) {
      SKYRING_THROW(TransportError, kCtx, "expected a ", name, " frame (type ",
                    static_cast<int>(want), "), got type ", static_cast<int>(frame.type));
    }
  }
  std::span<const std::byte> bytes(std::size_t n) {
    if (in_.size() - pos_ < n) {
      SKYRING_THROW(TransportError, kCtx, name_, " frame truncated: needs ", pos_ + n,
                    " bytes or more, has ", in_.size());
    }
    const auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::span<const std::byte> rest() { return bytes(in_.size() - pos_); }
  std::uint8_t u8() { return std::to_integer<std::uint8_t>(bytes(1)[0]); }
  std::uint16_t u16() { return le<std::uint16_t>(); }
  std::uint32_t u32() { return le<std::uint32_t>(); }
  std::uint64_t u64() { return le<std::uint64_t>(); }
  std::string text(std::size_t max, const char* what) {
    const std::size_t n = u16();
    if (n > max) {
      SKYRING_THROW(TransportError, kCtx, name_, " frame: ", what, " of ", n,
                    " bytes exceeds the limit of ", max);
    }
    const auto b = bytes(n);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  template <std::size_t N>
  void array(std::array<std::byte, N>& out) {
    std::memcpy(out.data(), bytes(N).data(), N);
  }
  void finish() const {
    if (pos_ != in_.size()) {
      SKYRING_THROW(TransportError, kCtx, name_, " frame has ", in_.size() - pos_,
                    " bytes beyond its ", pos_, " bytes of fields");
    }
  }

 private:
  template <typename T>
  T le() {
    const auto b = bytes(sizeof(T));
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      v = static_cast<T>(v | (static_cast<T>(std::to_integer<unsigned>(b[i])) << (8 * i)));
    }
    return v;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  const char* name_;
};

std::uint32_t getU32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i)
    v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}

void putU32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}

template <typename E>
E checkedEnum(std::uint8_t raw, std::uint8_t max, const char* what) {
  if (raw > max) {
    SKYRING_THROW(TransportError, kCtx, "unknown ", what, " ", static_cast<int>(raw));
  }
  return static_cast<E>(raw);
}

bool checkedBool(std::uint8_t raw, const char* what) {
  if (raw > 1) SKYRING_THROW(TransportError, kCtx, what, " must be 0 or 1, got ", int{raw});
  return raw == 1;
}

}  // namespace

std::vector<std::byte> encodeFrame(FrameType type, std::span<const std::byte> payload) {
  SKYRING_CHECK_ARG(payload.size() <= UINT32_MAX, kCtx, "payload of ", payload.size(),
                    " bytes does not fit a frame");
  std::vector<std::byte> out(kFrameHeaderBytes + payload.size());
  std::memcpy(out.data(), kMagic.data(), kMagic.size());
  out[4] = static_cast<std::byte>(kWireVersion);
  out[5] = static_cast<std::byte>(type);
  out[6] = out[7] = std::byte{0};
  putU32(out.data() + 8, static_cast<std::uint32_t>(payload.size()));
  if (!payload.empty()) std::memcpy(out.data() + kFrameHeaderBytes, payload.data(), payload.size());
  const std::uint32_t crc = crc32c(payload, crc32c(std::span(out).first(12)));
  putU32(out.data() + 12, crc);
  return out;
}

std::vector<std::byte> encode(const Challenge& m) {
  Writer w;
  w.bytes(m.serverNonce);
  return w.frame(FrameType::challenge);
}
std::vector<std::byte> encode(const Hello& m) {
  Writer w;
  w.text(m.cluster, kMaxNameBytes, "cluster name");
  w.bytes(m.clientNonce);
  w.bytes(m.proof);
  return w.frame(FrameType::hello);
}
std::vector<std::byte> encode(const Welcome& m) {
  Writer w;
  w.u64(m.round);
  w.u64(m.count);
  w.bytes(m.proof);
  return w.frame(FrameType::welcome);
}
std::vector<std::byte> encode(const SubmitBegin& m) {
  Writer w;
  w.u64(m.round);
  w.u8(static_cast<std::uint8_t>(m.codec));
  w.u64(m.count);
  w.u64(m.samples);
  return w.frame(FrameType::submitBegin);
}
std::vector<std::byte> encode(const SubmitChunk& m) {
  Writer w;
  w.u64(m.offset);
  w.bytes(m.blob);
  return w.frame(FrameType::submitChunk);
}
std::vector<std::byte> encode(const SubmitEnd& m) {
  Writer w;
  w.u64(m.round);
  return w.frame(FrameType::submitEnd);
}
std::vector<std::byte> encode(const Fetch& m) {
  Writer w;
  w.u64(m.round);
  w.u64(m.offset);
  return w.frame(FrameType::fetch);
}
std::vector<std::byte> encode(const Weights& m) {
  SKYRING_CHECK_ARG(m.values.size() % sizeof(float) == 0, kCtx, "weights of ", m.values.size(),
                    " bytes are not whole floats");
  Writer w;
  w.u64(m.round);
  w.u64(m.offset);
  w.u64(m.total);
  w.bytes(m.values);
  return w.frame(FrameType::weights);
}
std::vector<std::byte> encode(const Status& m) {
  Writer w;
  w.u64(m.round);
  return w.frame(FrameType::status);
}
std::vector<std::byte> encode(const RoundStatus& m) {
  Writer w;
  w.u64(m.round);
  w.u64(m.current);
  w.u8(static_cast<std::uint8_t>(m.state));
  w.u8(m.counted ? 1 : 0);
  w.u32(m.submitted);
  w.u32(m.quorum);
  w.u32(m.members);
  return w.frame(FrameType::roundStatus);
}
std::vector<std::byte> encode(const ErrorMessage& m) {
  Writer w;
  w.u16(static_cast<std::uint16_t>(m.code));
  // A reason too long is cut, not refused: an error must always be sendable.
  w.text(m.reason.substr(0, kMaxReasonBytes), kMaxReasonBytes, "reason");
  return w.frame(FrameType::error);
}
std::vector<std::byte> encode(const Late& m) {
  Writer w;
  w.u64(m.round);
  w.u64(m.current);
  w.u8(static_cast<std::uint8_t>(m.disposition));
  return w.frame(FrameType::late);
}

Challenge parseChallenge(const Frame& frame) {
  Reader r(frame, FrameType::challenge, "challenge");
  Challenge m;
  r.array(m.serverNonce);
  r.finish();
  return m;
}
Hello parseHello(const Frame& frame) {
  Reader r(frame, FrameType::hello, "hello");
  Hello m;
  m.cluster = r.text(kMaxNameBytes, "cluster name");
  r.array(m.clientNonce);
  r.array(m.proof);
  r.finish();
  return m;
}
Welcome parseWelcome(const Frame& frame) {
  Reader r(frame, FrameType::welcome, "welcome");
  Welcome m;
  m.round = r.u64();
  m.count = r.u64();
  r.array(m.proof);
  r.finish();
  return m;
}
SubmitBegin parseSubmitBegin(const Frame& frame) {
  Reader r(frame, FrameType::submitBegin, "submit-begin");
  SubmitBegin m;
  m.round = r.u64();
  m.codec = checkedEnum<SubmitCodec>(r.u8(), 3, "codec");
  m.count = r.u64();
  m.samples = r.u64();
  r.finish();
  return m;
}
SubmitChunk parseSubmitChunk(const Frame& frame) {
  Reader r(frame, FrameType::submitChunk, "submit-chunk");
  SubmitChunk m;
  m.offset = r.u64();
  m.blob = r.rest();
  return m;
}
SubmitEnd parseSubmitEnd(const Frame& frame) {
  Reader r(frame, FrameType::submitEnd, "submit-end");
  SubmitEnd m;
  m.round = r.u64();
  r.finish();
  return m;
}
Fetch parseFetch(const Frame& frame) {
  Reader r(frame, FrameType::fetch, "fetch");
  Fetch m;
  m.round = r.u64();
  m.offset = r.u64();
  r.finish();
  return m;
}
Weights parseWeights(const Frame& frame) {
  Reader r(frame, FrameType::weights, "weights");
  Weights m;
  m.round = r.u64();
  m.offset = r.u64();
  m.total = r.u64();
  m.values = r.rest();
  if (m.values.size() % sizeof(float) != 0) {
    SKYRING_THROW(TransportError, kCtx, "weights frame: ", m.values.size(),
                  " value bytes are not whole floats");
  }
  const std::uint64_t n = m.values.size() / sizeof(float);
  if (m.offset > m.total || n > m.total - m.offset) {
    SKYRING_THROW(TransportError, kCtx, "weights frame: elements [", m.offset, ", ", m.offset,
                  " + ", n, ") lie outside the model's ", m.total);
  }
  return m;
}
Status parseStatus(const Frame& frame) {
  Reader r(frame, FrameType::status, "status");
  Status m;
  m.round = r.u64();
  r.finish();
  return m;
}
RoundStatus parseRoundStatus(const Frame& frame) {
  Reader r(frame, FrameType::roundStatus, "round-status");
  RoundStatus m;
  m.round = r.u64();
  m.current = r.u64();
  m.state = checkedEnum<RoundState>(r.u8(), 2, "round state");
  m.counted = checkedBool(r.u8(), "counted");
  m.submitted = r.u32();
  m.quorum = r.u32();
  m.members = r.u32();
  r.finish();
  return m;
}
ErrorMessage parseError(const Frame& frame) {
  Reader r(frame, FrameType::error, "error");
  ErrorMessage m;
  // Unknown codes are kept: a newer peer may name a reason this one does not know.
  m.code = static_cast<ErrorCode>(r.u16());
  m.reason = r.text(kMaxReasonBytes, "reason");
  r.finish();
  return m;
}
Late parseLate(const Frame& frame) {
  Reader r(frame, FrameType::late, "late");
  Late m;
  m.round = r.u64();
  m.current = r.u64();
  m.disposition = checkedEnum<LateDisposition>(r.u8(), 1, "late disposition");
  r.finish();
  return m;
}

FrameDecoder::FrameDecoder(std::size_t maxPayload) : maxPayload_(maxPayload) {
  SKYRING_CHECK_ARG(maxPayload > 0 && maxPayload <= UINT32_MAX, kCtx, "maxPayload ", maxPayload,
                    " must be in [1, 2^32)");
}

void FrameDecoder::fail(const std::string& why) {
  failed_ = true;
  failure_ = why;
  SKYRING_THROW(TransportError, kCtx, why);
}

void FrameDecoder::feed(std::span<const std::byte> bytes) {
  if (failed_) SKYRING_THROW(TransportError, kCtx, "decoder failed earlier: ", failure_);
  // Drop consumed frames before growing, so the buffer never exceeds one frame plus what
  // the caller feeds at once.
  if (start_ > 0) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(start_));
    start_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  check();
}

void FrameDecoder::check() {
  const std::byte* p = buffer_.data() + start_;
  const std::size_t have = buffer_.size() - start_;
  if (have == 0) return;
  const std::size_t magicSeen = std::min(have, kMagic.size());
  if (std::memcmp(p, kMagic.data(), magicSeen) != 0) {
    fail("bad magic: not a skyring coordinator frame (expected \"SKCO\")");
  }
  if (have > 4 && std::to_integer<std::uint8_t>(p[4]) != kWireVersion) {
    fail(detail::concat("unsupported wire version ", std::to_integer<int>(p[4]),
                        " (this side speaks ", int{kWireVersion}, ")"));
  }
  if (have > 5) {
    const auto type = std::to_integer<std::uint8_t>(p[5]);
    if (type == 0 || type > kMaxFrameType) fail(detail::concat("unknown frame type ", int{type}));
  }
  if (have >= 8 && (p[6] != std::byte{0} || p[7] != std::byte{0})) {
    fail(detail::concat("unknown flags 0x", std::hex,
                        std::to_integer<unsigned>(p[6]) | (std::to_integer<unsigned>(p[7]) << 8)));
  }
  if (have >= 12) {
    const std::uint32_t length = getU32(p + 8);
    if (length > maxPayload_) {
      fail(
          detail::concat("frame payload of ", length, " bytes exceeds the limit of ", maxPayload_));
    }
  }
}

bool FrameDecoder::next(Frame& out) {
  if (failed_) SKYRING_THROW(TransportError, kCtx, "decoder failed earlier: ", failure_);
  const std::size_t have = buffer_.size() - start_;
  if (have < kFrameHeaderBytes) return false;
  const std::byte* p = buffer_.data() + start_;
  const std::uint32_t length = getU32(p + 8);
  if (have < kFrameHeaderBytes + length) return false;
  const auto payload = std::span(p + kFrameHeaderBytes, length);
  const std::uint32_t want = getU32(p + 12);
  const std::uint32_t got = crc32c(payload, crc32c(std::span(p, 12)));
  if (got != want) {
    fail(detail::concat("frame CRC32C mismatch (header says 0x", std::hex, want,
                        ", payload gives 0x", got, "): corrupt or not a frame"));
  }
  out.type = static_cast<FrameType>(std::to_integer<std::uint8_t>(p[5]));
  out.payload.assign(payload.begin(), payload.end());
  start_ += kFrameHeaderBytes + length;
  if (buffer_.size() > start_) check();  // judge the next frame's header already
  return true;
}

}  // namespace skyring::coordinator::wire
