// Compressed allreduce of one piece among G ranks (one per cloud), the cross-cloud level of
// hierarchical allreduce.
//
// Elementwise codecs (fp16, bf16, int8, sign, topk): a reduce-scatter and an allgather of
// encoded blocks, each one exchange among all G ranks at once.
//   1. The piece is cut into G blocks (Partition). Rank g encodes block j with its own
//      state toOwner[j] (error feedback per block) and sends it to rank j, for every j != g.
//   2. Rank g decodes the G - 1 blocks it received, adds them and its own block in group
//      order (0, 1, ..., G - 1: the result does not depend on arrival order), and divides
//      once for avg.
//   3. It encodes that sum with its state `reduced` (error feedback on the server side, as
//      1-bit Adam does: what the re-encoding drops is added next step) and sends the bytes
//      to every other rank; every rank, the owner included, decodes those same bytes into
//      block g. So all ranks end with identical bytes.
// Each rank sends 2(G-1) encoded blocks of len/G elements: 2(G-1)/G of the piece at the
// codec's ratio plus 2(G-1) headers, the bound the uncompressed ring meets, in two
// latencies instead of the ring's 2(G-1). Linear codecs (fp16, bf16) could be summed in
// their own format instead; decoding and summing in f32 costs no bytes and rounds once
// rather than at every hop, so they take this path too.
//
// topk's size depends on the data, and a receive must be posted with the exact size: for
// it an 8-byte length goes first on its own step and the payload follows at once, so the
// extra message costs no extra latency. Every other codec's size is known from the count.
//
// Inside a cloud (SKYRING_COMPRESSION_LEVELS=cloud) the two halves run apart, with the
// level across clouds between them: compressedReduceScatter is steps 1 and 2;
// compressedAllgather is step 3 for a rank that owns several pieces, each encoded alone so
// that owners in other clouds, holding the same piece, send the same bytes.
//
// PowerSGD: the two linear phases of powersgd.h around ring allreduces of the factors P
// and Q among the group (their sum is exact enough: they are small and in f32). Q is
// averaged over the G ranks as powerSgdDecompress expects, so the result approximates the
// mean of the G contributions, then scaled by G / divisor.
#include "collectives/compressed_allreduce.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "collectives/phases.h"
#include "collectives/ring.h"
#include "compression/powersgd.h"
#include "compression/reduce.h"

namespace skyring::collectives {
namespace {

using compression::Codec;
using compression::Compressor;

std::uint64_t mix(std::uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Outgoing {
  int peer;
  std::span<const std::byte> bytes;
};
struct Incoming {
  int peer;
  std::vector<std::byte>* bytes;  // sized to the largest possible; shrunk to what came
};

// Sends every outgoing encoding and receives every incoming one, all at once. With
// variableSize each payload is preceded by its length (step) and travels on step + 1.
void swapEncoded(Exchange& ex, std::uint32_t step, bool variableSize,
                 const std::vector<Outgoing>& out, const std::vector<Incoming>& in) {
  std::vector<std::unique_ptr<transport::Request>> sends;
  std::vector<std::unique_ptr<transport::Request>> recvs;
  std::vector<std::uint64_t> outLengths(out.size());
  std::vector<std::uint64_t> inLengths(in.size());
  if (variableSize) {
    std::vector<std::unique_ptr<transport::Request>> lengthRecvs;
    for (std::size_t i = 0; i < in.size(); ++i) {
      lengthRecvs.push_back(
          ex.recv(in[i].peer, step, std::as_writable_bytes(std::span(&inLengths[i], 1))));
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      outLengths[i] = out[i].bytes.size();
      sends.push_back(ex.send(out[i].peer, step, std::as_bytes(std::span(&outLengths[i], 1))));
      sends.push_back(ex.send(out[i].peer, step + 1, out[i].bytes));
    }
    for (std::size_t i = 0; i < in.size(); ++i) {
      ex.wait(lengthRecvs[i]);
      SKYRING_CHECK_ARG(inLengths[i] <= in[i].bytes->size(), ex.context(in[i].peer),
                        "an encoded block of ", inLengths[i], " bytes where at most ",
                        in[i].bytes->size(), " fit");
      in[i].bytes->resize(inLengths[i]);
      recvs.push_back(ex.recv(in[i].peer, step + 1, std::span(*in[i].bytes)));
    }
  } else {
    for (const auto& r : in)
      recvs.push_back(ex.recv(r.peer, step, std::span(*r.bytes)));
    for (const auto& s : out)
      sends.push_back(ex.send(s.peer, step, s.bytes));
  }
  ex.waitAll(recvs);
  ex.waitAll(sends);
}

void powerSgdPiece(Exchange& ex, float* piece, std::size_t len, std::size_t divisor,
                   const Compressor& codec, PieceCompressionState& state, std::uint64_t seed,
                   const RingParams& params) {
  const auto shape = compression::powerSgdShape(len, codec.options().rank);
  if (state.toOwner.size() != 1) state.toOwner.assign(1, codec.makeState(len, seed));
  auto& st = state.toOwner[0];
  std::vector<float> p(shape.pSize());
  std::vector<float> q(shape.qSize());
  const bool ef = codec.errorFeedback();
  const std::span<float> data(piece, len);
  // The factors P and Q are the encoding.
  const std::size_t factors = (p.size() + q.size()) * sizeof(float);
  {
    PhaseSpan encode(ex.phases(), "encode", codec);
    encode.add(len * sizeof(float), p.size() * sizeof(float));
    compression::powerSgdComputeP(data, ef, shape, st, p);
  }
  ringAllreduce(ex, view(std::span(p)), view(std::span(p)), ReduceOp::sum, params);
  {
    PhaseSpan encode(ex.phases(), "encode", codec);
    encode.add(len * sizeof(float), q.size() * sizeof(float));
    compression::powerSgdComputeQ(shape, st, p, q);
  }
  ringAllreduce(ex, view(std::span(q)), view(std::span(q)), ReduceOp::sum, params);
  compression::divideBy(DType::f32, q.data(), q.size(), static_cast<std::size_t>(ex.size()));
  {
    PhaseSpan decode(ex.phases(), "decode", codec);
    decode.add(len * sizeof(float), factors);
    compression::powerSgdDecompress(ef, shape, st, p, q, data);
  }
  // The mean over the group, scaled to its sum (and divided once more for avg).
  const auto groupSize = static_cast<float>(ex.size());
  for (float& v : data)
    v *= groupSize;
  if (divisor != 1) compression::divideBy(DType::f32, piece, len, divisor);
}

}  // namespace

void SegmentLayout::load(Residual role, std::size_t at, std::span<float> out) const {
  const auto r = static_cast<std::size_t>(role);
  for (const Entry& t : tensors) {
    const std::size_t lo = std::max(at, t.offset);
    const std::size_t hi = std::min(at + out.size(), t.offset + t.count);
    if (lo >= hi) continue;
    const auto& res = t.state->residual[r];
    float* dst = out.data() + (lo - at);
    if (res.empty()) {
      std::fill(dst, dst + (hi - lo), 0.0f);
    } else {
      std::memcpy(dst, res.data() + (lo - t.offset), (hi - lo) * sizeof(float));
    }
  }
}

void SegmentLayout::store(Residual role, std::size_t at, std::span<const float> in) const {
  const auto r = static_cast<std::size_t>(role);
  for (const Entry& t : tensors) {
    const std::size_t lo = std::max(at, t.offset);
    const std::size_t hi = std::min(at + in.size(), t.offset + t.count);
    if (lo >= hi) continue;
    auto& res = t.state->residual[r];
    if (res.size() != t.count) res.assign(t.count, 0.0f);
    std::memcpy(res.data() + (lo - t.offset), in.data() + (lo - at), (hi - lo) * sizeof(float));
  }
}

PieceCompressionState loadPiece(const SegmentLayout& layout, Residual send,
                                std::optional<Residual> reduced, std::size_t at, std::size_t len,
                                int groupSize, int me, const Compressor& codec,
                                std::uint64_t seed) {
  // The seeds of compressedReduceScatter and compressedPieceAllreduce, salted per call
  // (a fresh state's step is 0, and stochastic codecs must not repeat their draws).
  seed ^= mix(layout.salt);
  const Partition blocks{len, groupSize};
  PieceCompressionState state;
  for (int j = 0; j < groupSize; ++j) {
    state.toOwner.push_back(codec.makeState(blocks.size(j), mix(seed ^ mix(j + 1))));
    auto& st = state.toOwner.back();
    if (j != me && !st.residual.empty()) layout.load(send, at + blocks.offset(j), st.residual);
  }
  state.reduced = codec.makeState(blocks.size(me), mix(seed ^ 0x5e7e7ull));
  if (reduced && !state.reduced.residual.empty()) {
    layout.load(*reduced, at + blocks.offset(me), state.reduced.residual);
  }
  return state;
}

void storePiece(const SegmentLayout& layout, Residual send, std::optional<Residual> reduced,
                std::size_t at, std::size_t len, int me, const PieceCompressionState& state) {
  const Partition blocks{len, static_cast<int>(state.toOwner.size())};
  for (int j = 0; j < blocks.parts; ++j) {
    const auto& st = state.toOwner[static_cast<std::size_t>(j)];
    if (j != me && !st.residual.empty()) layout.store(send, at + blocks.offset(j), st.residual);
  }
  if (reduced && !state.reduced.residual.empty()) {
    layout.store(*reduced, at + blocks.offset(me), state.reduced.residual);
  }
}

namespace {

// fn(data of one tensor, its momentum vector, its last output) for every tensor.
template <typename Fn>
void eachTensor(float* data, std::size_t count, const SegmentLayout* layout,
                TensorCompressionState* state, Fn&& fn) {
  if (layout == nullptr) {
    fn(std::span<float>(data, count), state->momentum, state->lastOutput);
    return;
  }
  for (const auto& t : layout->tensors)
    fn(std::span<float>(data + t.offset, t.count), t.state->momentum, t.state->lastOutput);
}

}  // namespace

void momentumBefore(float* data, std::size_t count, double beta, const SegmentLayout* layout,
                    TensorCompressionState* state) {
  const auto b = static_cast<float>(beta);
  eachTensor(data, count, layout, state,
             [&](std::span<float> g, std::vector<float>& u, std::vector<float>&) {
               if (u.size() != g.size()) u.assign(g.size(), 0.0f);
               for (std::size_t i = 0; i < g.size(); ++i) {
                 u[i] = b * u[i] + g[i];
                 g[i] = u[i];
               }
             });
}

void momentumAfter(float* data, std::size_t count, double beta, const SegmentLayout* layout,
                   TensorCompressionState* state) {
  const auto b = static_cast<float>(beta);
  eachTensor(data, count, layout, state,
             [&](std::span<float> m, std::vector<float>&, std::vector<float>& last) {
               if (last.size() != m.size()) last.assign(m.size(), 0.0f);
               for (std::size_t i = 0; i < m.size(); ++i) {
                 const float decoded = m[i];
                 m[i] = decoded - b * last[i];
                 last[i] = decoded;
               }
             });
}

void compressedReduceScatter(Exchange& ex, float* piece, std::size_t len, const Compressor& codec,
                             PieceCompressionState& state, std::uint64_t seed) {
  const int groupSize = ex.size();
  const int me = ex.rank();
  const Partition blocks{len, groupSize};
  const auto at = [&](int j) { return std::span<float>(piece + blocks.offset(j), blocks.size(j)); };
  if (state.toOwner.size() != static_cast<std::size_t>(groupSize)) {
    state.toOwner.clear();
    for (int j = 0; j < groupSize; ++j)
      state.toOwner.push_back(codec.makeState(blocks.size(j), mix(seed ^ mix(j + 1))));
  }
  if (groupSize == 1) return;
  const bool variableSize = codec.codec() == Codec::topk;
  const std::size_t mine = blocks.size(me);

  // 1. Each block to its owner, encoded; this rank's own block from everyone.
  std::vector<std::vector<std::byte>> sent(static_cast<std::size_t>(groupSize));
  std::vector<std::vector<std::byte>> got(static_cast<std::size_t>(groupSize));
  std::vector<Outgoing> out;
  std::vector<Incoming> in;
  {
    PhaseSpan encode(ex.phases(), "encode", codec);
    for (int j = 0; j < groupSize; ++j) {
      if (j == me) continue;
      const auto ju = static_cast<std::size_t>(j);
      if (blocks.size(j) > 0) {
        sent[ju].resize(codec.maxEncodedBytes(blocks.size(j)));
        sent[ju].resize(codec.encode(at(j), state.toOwner[ju], sent[ju]));
        out.push_back({j, sent[ju]});
        encode.add(blocks.size(j) * sizeof(float), sent[ju].size());
      }
      if (mine > 0) {
        got[ju].resize(codec.maxEncodedBytes(mine));
        in.push_back({j, &got[ju]});
      }
    }
  }
  swapEncoded(ex, 0, variableSize, out, in);

  // 2. The sum of this rank's block, in group order, in place of its own contribution.
  std::vector<float> sum(mine);
  std::vector<float> decoded(mine);
  PhaseSpan decode(ex.phases(), "decode", codec);  // the blocks' sum included
  for (int h = 0; h < groupSize && mine > 0; ++h) {
    const float* term = at(me).data();
    if (h != me) {
      codec.decode(got[static_cast<std::size_t>(h)], decoded);
      decode.add(mine * sizeof(float), got[static_cast<std::size_t>(h)].size());
      term = decoded.data();
    }
    if (h == 0) {
      std::memcpy(sum.data(), term, mine * sizeof(float));
    } else {
      compression::reduce(ReduceOp::sum, DType::f32, sum.data(), sum.data(), term, mine);
    }
  }
  if (mine > 0) std::memcpy(at(me).data(), sum.data(), mine * sizeof(float));
}

void compressedPieceAllreduce(Exchange& ex, float* piece, std::size_t len, std::size_t divisor,
                              const Compressor& codec, PieceCompressionState& state,
                              std::uint64_t seed, const RingParams& params) {
  const int groupSize = ex.size();
  if (groupSize == 1) {
    if (divisor != 1) compression::divideBy(DType::f32, piece, len, divisor);
    return;
  }
  if (codec.codec() == Codec::powersgd) {
    powerSgdPiece(ex, piece, len, divisor, codec, state, seed, params);
    return;
  }
  const int me = ex.rank();
  const Partition blocks{len, groupSize};
  const auto at = [&](int j) { return std::span<float>(piece + blocks.offset(j), blocks.size(j)); };
  if (state.toOwner.size() != static_cast<std::size_t>(groupSize)) {
    state.reduced = codec.makeState(blocks.size(me), mix(seed ^ 0x5e7e7ull));
  }
  const std::size_t mine = blocks.size(me);

  // 1, 2. Each block to its owner, encoded, and summed there.
  compressedReduceScatter(ex, piece, len, codec, state, seed);
  if (divisor != 1) compression::divideBy(DType::f32, at(me).data(), mine, divisor);

  // 3. The sum, encoded once, to everyone; every rank decodes the same bytes.
  std::vector<std::vector<OwnedPiece>> owned(static_cast<std::size_t>(groupSize));
  for (int j = 0; j < groupSize; ++j) {
    owned[static_cast<std::size_t>(j)].push_back(
        {blocks.offset(j), blocks.size(j), j == me ? &state.reduced : nullptr});
  }
  compressedAllgather(ex, piece, owned, codec, 2);
}

void compressedAllgather(Exchange& ex, float* buffer,
                         const std::vector<std::vector<OwnedPiece>>& owned, const Compressor& codec,
                         std::uint32_t step) {
  const int groupSize = ex.size();
  const int me = ex.rank();
  // A message is the sender's non-empty pieces encoded back to back. When the codec's size
  // depends on the data the message's own length goes first (see swapEncoded), and each
  // piece is behind an 8-byte length of its own if there are several.
  const bool variableSize = codec.codec() == Codec::topk;
  const auto prefixOf = [&](const std::vector<OwnedPiece>& pieces) {
    const auto nonEmpty =
        std::count_if(pieces.begin(), pieces.end(), [](const OwnedPiece& p) { return p.len > 0; });
    return variableSize && nonEmpty > 1 ? sizeof(std::uint64_t) : std::size_t{0};
  };
  const auto maxBytes = [&](const std::vector<OwnedPiece>& pieces) {
    std::size_t n = 0;
    for (const auto& p : pieces)
      n += p.len > 0 ? prefixOf(pieces) + codec.maxEncodedBytes(p.len) : 0;
    return n;
  };
  const auto decodeAll = [&](std::span<const std::byte> bytes,
                             const std::vector<OwnedPiece>& pieces, int from) {
    const std::size_t prefix = prefixOf(pieces);
    std::size_t at = 0;
    for (const auto& p : pieces) {
      if (p.len == 0) continue;
      std::size_t size = variableSize ? bytes.size() - at : codec.maxEncodedBytes(p.len);
      if (prefix > 0) {
        std::uint64_t n = 0;
        SKYRING_CHECK_ARG(at + prefix <= bytes.size(), ex.context(from),
                          "an encoded allgather message ends inside a length");
        std::memcpy(&n, bytes.data() + at, prefix);
        at += prefix;
        size = static_cast<std::size_t>(n);
      }
      SKYRING_CHECK_ARG(size <= bytes.size() - at, ex.context(from), "an encoded piece of ", size,
                        " bytes where ", bytes.size() - at, " are left");
      codec.decode(bytes.subspan(at, size), std::span<float>(buffer + p.offset, p.len));
      at += size;
    }
    SKYRING_CHECK_ARG(at == bytes.size(), ex.context(from), bytes.size() - at,
                      " bytes after the last encoded piece");
  };

  const auto& myPieces = owned[static_cast<std::size_t>(me)];
  const std::size_t prefix = prefixOf(myPieces);
  std::vector<std::byte> mine(maxBytes(myPieces));
  std::size_t used = 0;
  std::size_t myBytes = 0;  // full precision
  {
    PhaseSpan encode(ex.phases(), "encode", codec);
    for (const auto& p : myPieces) {
      if (p.len == 0) continue;
      const std::size_t size = codec.encode(std::span<const float>(buffer + p.offset, p.len),
                                            *p.state, std::span(mine).subspan(used + prefix));
      if (prefix > 0) {
        const std::uint64_t n = size;
        std::memcpy(mine.data() + used, &n, prefix);
      }
      used += prefix + size;
      myBytes += p.len * sizeof(float);
    }
    encode.add(myBytes, used);
  }
  mine.resize(used);
  {
    PhaseSpan decode(ex.phases(), "decode", codec);
    decode.add(myBytes, used);
    decodeAll(mine, myPieces, me);  // the owner keeps what the others get
  }

  std::vector<std::vector<std::byte>> got(static_cast<std::size_t>(groupSize));
  std::vector<Outgoing> out;
  std::vector<Incoming> in;
  for (int j = 0; j < groupSize; ++j) {
    if (j == me) continue;
    const auto ju = static_cast<std::size_t>(j);
    if (!mine.empty()) out.push_back({j, mine});
    got[ju].resize(maxBytes(owned[ju]));
    if (!got[ju].empty()) in.push_back({j, &got[ju]});
  }
  swapEncoded(ex, step, variableSize, out, in);
  PhaseSpan decode(ex.phases(), "decode", codec);
  for (const auto& r : in) {
    decodeAll(*r.bytes, owned[static_cast<std::size_t>(r.peer)], r.peer);
    if (!decode.recording()) continue;
    std::size_t len = 0;
    for (const auto& p : owned[static_cast<std::size_t>(r.peer)])
      len += p.len;
    decode.add(len * sizeof(float), r.bytes->size());
  }
}

}  // namespace skyring::collectives
