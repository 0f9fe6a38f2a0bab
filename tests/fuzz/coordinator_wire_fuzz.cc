// libFuzzer target of the coordinator's frame decoder and parsers (src/coordinator/wire.h).
// The first input byte picks how the rest is split into feed() calls (bits 0-5), so the
// fuzzer also explores frames that arrive in pieces, and whether the harness writes the
// right CRC32C into every frame first (bit 7), so mutated payloads reach the parsers. Any
// skyring::Error is the expected refusal; a crash, a sanitizer report, another exception or a frame
// that parses but does not encode back to the same bytes is a finding. Built and run by
// run_coordinator_fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "coordinator/crc32c.h"
#include "coordinator/wire.h"
#include "skyring/error.h"

using namespace skyring::coordinator::wire;

namespace {

// Parses a frame with the parser of its type and, where the message owns all its bytes,
// checks that encoding it again gives the same frame.
void parseAndReencode(const Frame& f) {
  std::vector<std::byte> again;
  switch (f.type) {
    case FrameType::challenge:
      again = encode(parseChallenge(f));
      break;
    case FrameType::hello:
      again = encode(parseHello(f));
      break;
    case FrameType::welcome:
      again = encode(parseWelcome(f));
      break;
    case FrameType::submitBegin:
      again = encode(parseSubmitBegin(f));
      break;
    case FrameType::submitChunk:
      again = encode(parseSubmitChunk(f));
      break;
    case FrameType::submitEnd:
      again = encode(parseSubmitEnd(f));
      break;
    case FrameType::fetch:
      again = encode(parseFetch(f));
      break;
    case FrameType::weights:
      again = encode(parseWeights(f));
      break;
    case FrameType::status:
      again = encode(parseStatus(f));
      break;
    case FrameType::roundStatus:
      again = encode(parseRoundStatus(f));
      break;
    case FrameType::error:
      again = encode(parseError(f));
      break;
    case FrameType::late:
      again = encode(parseLate(f));
      break;
  }
  const std::vector<std::byte> original = encodeFrame(f.type, f.payload);
  if (again != original) std::abort();
}

// Writes the CRC each whole frame's header and payload call for.
void repairCrcs(std::vector<std::byte>& b) {
  auto u32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i)
      v = (v << 8) | std::to_integer<std::uint32_t>(b[at + i]);
    return v;
  };
  std::size_t pos = 0;
  while (pos + kFrameHeaderBytes <= b.size()) {
    const std::size_t length = u32(pos + 8);
    if (length > b.size() - pos - kFrameHeaderBytes) break;
    const auto frame = std::span(b).subspan(pos);
    const std::uint32_t crc = skyring::coordinator::crc32c(
        frame.subspan(kFrameHeaderBytes, length), skyring::coordinator::crc32c(frame.first(12)));
    for (int i = 0; i < 4; ++i)
      b[pos + 12 + i] = static_cast<std::byte>((crc >> (8 * i)) & 0xffu);
    pos += kFrameHeaderBytes + length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t step = 1 + (data[0] & 63u);
  const auto raw = std::as_bytes(std::span(data + 1, size - 1));
  std::vector<std::byte> bytes(raw.begin(), raw.end());
  if ((data[0] & 0x80u) != 0) repairCrcs(bytes);
  FrameDecoder decoder(4096);
  try {
    for (std::size_t pos = 0; pos < bytes.size(); pos += step) {
      decoder.feed(std::span(bytes).subspan(pos, std::min(step, bytes.size() - pos)));
      Frame frame;
      while (decoder.next(frame)) {
        try {
          parseAndReencode(frame);
        } catch (const skyring::Error&) {
          // A well-framed message with bad fields: refused, the stream goes on.
        }
      }
    }
  } catch (const skyring::Error&) {
    // Refused stream: bad magic, version, type, flags, length or CRC.
  }
  return 0;
}
