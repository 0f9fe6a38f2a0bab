// The coordinator's frames: every message round-trips; the incremental decoder assembles
// frames from any split and refuses bad magic, version, type, flags, oversized lengths,
// CRC mismatches and truncated or padded payloads with a TransportError saying which.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "coordinator/auth.h"
#include "coordinator/crc32c.h"
#include "coordinator/wire.h"
#include "skyring/error.h"

namespace skyring::coordinator::wire {
namespace {

Frame decodeOne(const std::vector<std::byte>& bytes) {
  FrameDecoder decoder;
  decoder.feed(bytes);
  Frame frame;
  EXPECT_TRUE(decoder.next(frame));
  EXPECT_EQ(decoder.pending(), 0u);
  return frame;
}

template <typename F>
std::string transportError(F&& f) {
  try {
    f();
  } catch (const TransportError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no TransportError";
  return {};
}

TEST(CoordinatorWire, Crc32cKnownValue) {
  // The CRC32C check value of RFC 3720 (iSCSI): "123456789" -> 0xe3069283.
  const std::string s = "123456789";
  EXPECT_EQ(crc32c(std::as_bytes(std::span(s.data(), s.size()))), 0xe3069283u);
  const auto b = std::as_bytes(std::span(s.data(), s.size()));
  EXPECT_EQ(crc32c(b.subspan(4), crc32c(b.first(4))), 0xe3069283u);
}

TEST(CoordinatorWire, MessagesRoundTrip) {
  Nonce n{};
  for (std::size_t i = 0; i < n.size(); ++i)
    n[i] = static_cast<std::byte>(i * 7);
  Mac mac{};
  mac[3] = std::byte{9};

  EXPECT_EQ(parseChallenge(decodeOne(encode(Challenge{n}))).serverNonce, n);
  const Hello hello = parseHello(decodeOne(encode(Hello{"aws-us-east", n, mac})));
  EXPECT_EQ(hello.cluster, "aws-us-east");
  EXPECT_EQ(hello.clientNonce, n);
  EXPECT_EQ(hello.proof, mac);
  const Welcome welcome = parseWelcome(decodeOne(encode(Welcome{7, 1000, mac})));
  EXPECT_EQ(welcome.round, 7u);
  EXPECT_EQ(welcome.count, 1000u);
  const SubmitBegin begin =
      parseSubmitBegin(decodeOne(encode(SubmitBegin{3, SubmitCodec::int8, 1u << 30, 4096})));
  EXPECT_EQ(begin.round, 3u);
  EXPECT_EQ(begin.codec, SubmitCodec::int8);
  EXPECT_EQ(begin.count, 1u << 30);
  EXPECT_EQ(begin.samples, 4096u);
  const std::vector<std::byte> blob(100, std::byte{0x5a});
  const Frame chunkFrame = decodeOne(encode(SubmitChunk{12345, blob}));
  const SubmitChunk chunk = parseSubmitChunk(chunkFrame);
  EXPECT_EQ(chunk.offset, 12345u);
  EXPECT_TRUE(std::equal(chunk.blob.begin(), chunk.blob.end(), blob.begin(), blob.end()));
  EXPECT_EQ(parseSubmitEnd(decodeOne(encode(SubmitEnd{3}))).round, 3u);
  const Fetch fetch = parseFetch(decodeOne(encode(Fetch{4, 64})));
  EXPECT_EQ(fetch.round, 4u);
  EXPECT_EQ(fetch.offset, 64u);
  const std::vector<std::byte> values(16);
  const Frame weightsFrame = decodeOne(encode(Weights{4, 8, 12, values}));
  const Weights weights = parseWeights(weightsFrame);
  EXPECT_EQ(weights.offset, 8u);
  EXPECT_EQ(weights.total, 12u);
  EXPECT_EQ(weights.values.size(), 16u);
  EXPECT_EQ(parseStatus(decodeOne(encode(Status{9}))).round, 9u);
  const RoundStatus rs =
      parseRoundStatus(decodeOne(encode(RoundStatus{2, 3, RoundState::closed, true, 2, 2, 3})));
  EXPECT_EQ(rs.round, 2u);
  EXPECT_EQ(rs.current, 3u);
  EXPECT_EQ(rs.state, RoundState::closed);
  EXPECT_TRUE(rs.counted);
  EXPECT_EQ(rs.members, 3u);
  const ErrorMessage err =
      parseError(decodeOne(encode(ErrorMessage{ErrorCode::unauthorized, "wrong token"})));
  EXPECT_EQ(err.code, ErrorCode::unauthorized);
  EXPECT_EQ(err.reason, "wrong token");
  const Late late = parseLate(decodeOne(encode(Late{1, 2, LateDisposition::carried})));
  EXPECT_EQ(late.disposition, LateDisposition::carried);
}

TEST(CoordinatorWire, DecoderAssemblesAnySplit) {
  std::vector<std::byte> stream;
  for (int i = 0; i < 20; ++i) {
    const auto f = encode(SubmitEnd{static_cast<std::uint64_t>(i)});
    stream.insert(stream.end(), f.begin(), f.end());
    const std::vector<std::byte> blob(static_cast<std::size_t>(i * 37), std::byte{1});
    const auto c = encode(SubmitChunk{static_cast<std::uint64_t>(i), blob});
    stream.insert(stream.end(), c.begin(), c.end());
  }
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    FrameDecoder decoder;
    std::size_t pos = 0;
    int frames = 0;
    while (pos < stream.size()) {
      const std::size_t n = std::min<std::size_t>(1 + rng() % 50, stream.size() - pos);
      decoder.feed(std::span(stream).subspan(pos, n));
      pos += n;
      Frame f;
      while (decoder.next(f)) {
        if (frames % 2 == 0) {
          EXPECT_EQ(parseSubmitEnd(f).round, static_cast<std::uint64_t>(frames / 2));
        } else {
          EXPECT_EQ(parseSubmitChunk(f).blob.size(), static_cast<std::size_t>(frames / 2 * 37));
        }
        ++frames;
      }
    }
    EXPECT_EQ(frames, 40);
    EXPECT_EQ(decoder.pending(), 0u);
  }
}

TEST(CoordinatorWire, DecoderRefusesBadHeaders) {
  const auto good = encode(Status{1});
  auto with = [&](std::size_t at, std::byte value) {
    auto b = good;
    b[at] = value;
    return b;
  };
  auto feedAll = [](std::vector<std::byte> bytes, std::size_t maxPayload = kDefaultMaxPayload) {
    FrameDecoder d(maxPayload);
    d.feed(bytes);
    Frame f;
    while (d.next(f)) {
    }
  };
  EXPECT_NE(transportError([&] { feedAll(with(0, std::byte{'G'})); }).find("bad magic"),
            std::string::npos);
  // Garbage is refused on its first byte, without waiting for a header.
  EXPECT_NE(transportError([&] {
              FrameDecoder d;
              const std::byte g[1] = {std::byte{'G'}};
              d.feed(g);
            }).find("bad magic"),
            std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(with(4, std::byte{2})); }).find("wire version 2"),
            std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(with(5, std::byte{0})); }).find("frame type 0"),
            std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(with(5, std::byte{200})); }).find("frame type 200"),
            std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(with(7, std::byte{1})); }).find("unknown flags"),
            std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(with(16, std::byte{0xff})); }).find("CRC32C"),
            std::string::npos);
  // A length over the limit is refused from the header alone (no payload was sent).
  auto huge = good;
  huge.resize(kFrameHeaderBytes);
  huge[11] = std::byte{0x7f};
  EXPECT_NE(transportError([&] { feedAll(huge); }).find("exceeds the limit"), std::string::npos);
  EXPECT_NE(transportError([&] { feedAll(good, 4); }).find("exceeds the limit"), std::string::npos);

  // Poisoned: once failed, it refuses everything after.
  FrameDecoder d;
  EXPECT_THROW(d.feed(with(0, std::byte{0})), TransportError);
  EXPECT_NE(transportError([&] { d.feed(good); }).find("failed earlier"), std::string::npos);
}

TEST(CoordinatorWire, TruncatedFrameWaitsAndParsersRefuseBadPayloads) {
  const auto good = encode(SubmitBegin{1, SubmitCodec::fp16, 10, 5});
  FrameDecoder d;
  d.feed(std::span(good).first(good.size() - 1));
  Frame f;
  EXPECT_FALSE(d.next(f));
  EXPECT_EQ(d.pending(), good.size() - 1);

  // A payload one byte short of its fields, or one byte long, is refused by the parser.
  std::vector<std::byte> payload(good.begin() + kFrameHeaderBytes, good.end());
  auto shortPayload = payload;
  shortPayload.pop_back();
  EXPECT_NE(transportError([&] {
              parseSubmitBegin(decodeOne(encodeFrame(FrameType::submitBegin, shortPayload)));
            }).find("truncated"),
            std::string::npos);
  auto longPayload = payload;
  longPayload.push_back(std::byte{0});
  EXPECT_NE(transportError([&] {
              parseSubmitBegin(decodeOne(encodeFrame(FrameType::submitBegin, longPayload)));
            }).find("beyond"),
            std::string::npos);
  auto badCodec = payload;
  badCodec[8] = std::byte{6};  // powersgd: not a codec the coordinator takes
  EXPECT_NE(transportError([&] {
              parseSubmitBegin(decodeOne(encodeFrame(FrameType::submitBegin, badCodec)));
            }).find("codec"),
            std::string::npos);
  // The wrong parser for a frame names both types.
  EXPECT_NE(transportError([&] { parseHello(decodeOne(good)); }).find("expected a hello"),
            std::string::npos);
  // A name longer than the limit.
  std::vector<std::byte> longName = {std::byte{0xff}, std::byte{0x00}};
  longName.resize(2 + 255 + 64);
  EXPECT_NE(transportError([&] {
              parseHello(decodeOne(encodeFrame(FrameType::hello, longName)));
            }).find("exceeds the limit"),
            std::string::npos);
  // Weights outside the model.
  const std::vector<std::byte> values(8);
  EXPECT_THROW(parseWeights(decodeOne(encode(Weights{1, 11, 12, values}))), TransportError);
}

TEST(CoordinatorWire, TokenProofs) {
  const auth::Key key = auth::deriveKey("job-token");
  const auth::Key other = auth::deriveKey("other-token");
  EXPECT_NE(key, other);
  const Nonce s = auth::randomNonce();
  const Nonce c = auth::randomNonce();
  EXPECT_NE(s, c);
  const Mac client = auth::clientProof(key, s, c, "gcp");
  EXPECT_TRUE(auth::sameMac(client, auth::clientProof(key, s, c, "gcp")));
  EXPECT_FALSE(auth::sameMac(client, auth::clientProof(other, s, c, "gcp")));
  EXPECT_FALSE(auth::sameMac(client, auth::clientProof(key, s, c, "aws")));
  EXPECT_FALSE(auth::sameMac(client, auth::clientProof(key, c, s, "gcp")));
  // The server's proof is not the client's over the same inputs (no reflection).
  EXPECT_FALSE(auth::sameMac(client, auth::serverProof(key, s, c, "gcp")));
}

}  // namespace
}  // namespace skyring::coordinator::wire
