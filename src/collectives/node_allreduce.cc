#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <sstream>

#include "collectives/exchange.h"
#include "collectives/node_algorithms.h"
#include "collectives/ring.h"
#include "collectives/scratch.h"
#include "compression/reduce.h"

namespace skyring::collectives {
namespace {

using transport::NodeCall;
using transport::NodeChannel;

NodeCall makeCall(Opcode opcode, DType dtype, ReduceOp op, std::size_t count, const void* input,
                  const void* output) {
  NodeCall c;
  c.opcode = static_cast<std::uint32_t>(opcode);
  c.dtype = static_cast<std::uint32_t>(dtype);
  c.op = static_cast<std::uint32_t>(op);
  c.count = count;
  c.input = reinterpret_cast<std::uint64_t>(input);
  c.output = reinterpret_cast<std::uint64_t>(output);
  return c;
}

CallSignature signatureOf(const NodeCall& c) {
  return {static_cast<Opcode>(c.opcode), static_cast<DType>(c.dtype), static_cast<ReduceOp>(c.op),
          c.count, -1};
}

// pad carries the user tag of node-level calls (node_level_allreduce.cc): two threads
// interleaving calls of different tags on one node are then named, not mixed up.
bool sameCall(const NodeCall& a, const NodeCall& b) {
  return a.opcode == b.opcode && a.dtype == b.dtype && a.op == b.op && a.count == b.count &&
         a.pad == b.pad;
}

// Arrives, waits for every local rank, and fails (aborting the group) if any of them
// entered a different call.
void meet(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine,
          transport::Clock::time_point deadline, const char* op) {
  ch.arrive(seq, mine);
  ch.waitArrived(seq, deadline, op);
  bool same = true;
  for (int p = 0; p < ch.size(); ++p)
    same = same && sameCall(ch.call(p, seq), mine);
  if (same) return;
  std::ostringstream os;
  os << "ranks disagree about node call #" << seq << ": rank " << ch.worldRank(ch.rank())
     << " called " << describe(signatureOf(mine));
  for (int p = 0; p < ch.size(); ++p) {
    if (!sameCall(ch.call(p, seq), mine))
      os << ", rank " << ch.worldRank(p) << " called " << describe(signatureOf(ch.call(p, seq)));
  }
  ch.abort(ErrorKind::transport, os.str());
  SKYRING_THROW(TransportError, (ErrorContext{ch.worldRank(ch.rank()), -1, op}), os.str());
}

// Where a call's elements are: one input and one output buffer (Contiguous), or several
// buffers reduced in place as if they were one (Scattered, nodeAllreducePieces). Offsets
// and lengths are in bytes of the whole call.
struct Contiguous {
  const std::byte* in;
  std::byte* out;
  void read(std::size_t at, std::byte* to, std::size_t n) const {
    if (n != 0) std::memcpy(to, in + at, n);
  }
  // The input at [at, at + n) where it is one run of memory (always, here).
  const std::byte* view(std::size_t at, std::size_t /*n*/) const { return in + at; }
  void write(std::size_t at, const std::byte* from, std::size_t n) const {
    if (n != 0) std::memcpy(out + at, from, n);
  }
  // Calls f(piece, byteOffsetInCall) for the output's pieces (one).
  template <typename F>
  void forEachOutput(DType dtype, std::size_t bytes, F&& f) const {
    f(BufferView{out, bytes / dtypeSize(dtype), dtype, MemoryKind::host}, std::size_t{0});
  }
};

class Scattered {
 public:
  explicit Scattered(std::span<const BufferView> pieces) : pieces_(pieces) {
    starts_.reserve(pieces.size() + 1);
    std::size_t at = 0;
    for (const BufferView& b : pieces) {
      starts_.push_back(at);
      at += b.bytes();
    }
    starts_.push_back(at);
  }
  std::size_t bytes() const { return starts_.back(); }
  void read(std::size_t at, std::byte* to, std::size_t n) const {
    each(at, n, [&](std::byte* piece, std::size_t done, std::size_t len) {
      std::memcpy(to + done, piece, len);
    });
  }
  const std::byte* view(std::size_t at, std::size_t n) const {
    const std::size_t i = pieceAt(at);
    if (i >= pieces_.size() || at + n > starts_[i + 1]) return nullptr;
    return static_cast<const std::byte*>(pieces_[i].data) + (at - starts_[i]);
  }
  void write(std::size_t at, const std::byte* from, std::size_t n) const {
    each(at, n, [&](std::byte* piece, std::size_t done, std::size_t len) {
      std::memcpy(piece, from + done, len);
    });
  }
  template <typename F>
  void forEachOutput(DType /*dtype*/, std::size_t /*bytes*/, F&& f) const {
    for (std::size_t i = 0; i < pieces_.size(); ++i)
      f(pieces_[i], starts_[i]);
  }

 private:
  // The piece holding byte `at` (the first of equal starts: empty pieces are skipped).
  std::size_t pieceAt(std::size_t at) const {
    auto it = std::upper_bound(starts_.begin(), starts_.end(), at);
    std::size_t i = static_cast<std::size_t>(it - starts_.begin()) - 1;
    while (i < pieces_.size() && pieces_[i].bytes() == 0)
      ++i;
    return i;
  }
  // f(memory, bytes done before it, length) for each run of [at, at + n).
  template <typename F>
  void each(std::size_t at, std::size_t n, F&& f) const {
    std::size_t done = 0;
    for (std::size_t i = n == 0 ? pieces_.size() : pieceAt(at); done < n && i < pieces_.size();
         ++i) {
      const std::size_t from = at + done - starts_[i];
      const std::size_t len = std::min(n - done, pieces_[i].bytes() - from);
      if (len == 0) continue;  // an empty piece (its data may be null)
      f(static_cast<std::byte*>(pieces_[i].data) + from, done, len);
      done += len;
    }
  }

  std::span<const BufferView> pieces_;
  std::vector<std::size_t> starts_;  // byte offset of each piece in the call; then the total
};

template <typename Buffers>
void slotsAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine,
                    const Buffers& buffers, DType dtype, std::size_t count, ReduceOp op,
                    transport::Clock::time_point deadline) {
  buffers.read(0, ch.slot(ch.rank(), seq).data(), count * dtypeSize(dtype));
  meet(ch, seq, mine, deadline, "allreduce");
  const int n = ch.size();
  buffers.forEachOutput(dtype, count * dtypeSize(dtype), [&](BufferView out, std::size_t at) {
    if (out.count == 0) return;
    compression::reduce(op, dtype, out.data, ch.slot(0, seq).data() + at,
                        ch.slot(1, seq).data() + at, out.count);
    for (int p = 2; p < n; ++p)
      compression::reduce(op, dtype, out.data, out.data, ch.slot(p, seq).data() + at, out.count);
    if (op == ReduceOp::avg)
      compression::divideBy(dtype, out.data, out.count, static_cast<std::size_t>(n));
  });
}

// Pipelined through a ring of blocks in each rank's region: round k handles chunk k of
// every segment. A block holds one chunk per segment: the rank's copies of its input for
// the other segments, and the reduced chunk of its own segment.
template <typename Buffers>
void stagedAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine,
                     const Buffers& buffers, DType dtype, std::size_t count, ReduceOp op,
                     transport::Clock::time_point deadline, const NodeParams& params) {
  using Counter = NodeChannel::Counter;
  meet(ch, seq, mine, deadline, "allreduce");
  const int n = ch.size();
  const int me = ch.rank();
  const std::size_t elem = dtypeSize(dtype);
  const Partition part{count, n};
  const std::size_t region = ch.region(me).size();
  // Chunk elements: as configured, but no longer than a segment and at least two blocks
  // must fit in the region.
  const std::size_t chunkElems =
      std::min(collectives::chunkElems(params.chunkBytes, elem, part.size(0)),
               region / (2 * static_cast<std::size_t>(n) * elem));
  const std::size_t blockBytes = static_cast<std::size_t>(n) * chunkElems * elem;
  const std::size_t depth = region / blockBytes;
  const std::size_t rounds = (part.size(0) + chunkElems - 1) / chunkElems;  // segment 0 is largest
  auto length = [&](int q, std::size_t k) -> std::size_t {
    const std::size_t done = k * chunkElems;
    return done >= part.size(q) ? 0 : std::min(chunkElems, part.size(q) - done);
  };
  auto at = [&](int q, std::size_t k) { return (part.offset(q) + k * chunkElems) * elem; };
  auto block = [&](int p, std::size_t k) { return ch.region(p).data() + (k % depth) * blockBytes; };
  auto stamp = [&](std::size_t k) { return seq << 32 | (k + 1); };

  for (std::size_t k = 0; k < rounds; ++k) {
    // Block k % depth was last used in round k - depth: every peer must be done with it.
    if (k >= depth) ch.waitAll(Counter::consumed, stamp(k - depth), deadline, "allreduce");
    std::byte* const own = block(me, k);
    for (int q = 0; q < n; ++q) {
      if (q != me) buffers.read(at(q, k), own + q * chunkElems * elem, length(q, k) * elem);
    }
    ch.post(Counter::copied, stamp(k));
    ch.waitAll(Counter::copied, stamp(k), deadline, "allreduce");

    std::byte* const result = own + me * chunkElems * elem;
    const std::size_t len = length(me, k);
    // This rank's own chunk is read where it is, or gathered first where it spans pieces.
    const std::byte* first = buffers.view(at(me, k), len * elem);
    if (first == nullptr) {
      buffers.read(at(me, k), result, len * elem);
      first = result;
    }
    bool started = false;
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      compression::reduce(op, dtype, result, started ? result : first,
                          block(p, k) + me * chunkElems * elem, len);
      started = true;
    }
    if (op == ReduceOp::avg) compression::divideBy(dtype, result, len, static_cast<std::size_t>(n));
    buffers.write(at(me, k), result, len * elem);
    ch.post(Counter::reduced, stamp(k));
    ch.waitAll(Counter::reduced, stamp(k), deadline, "allreduce");

    for (int q = 0; q < n; ++q) {
      if (q != me)
        buffers.write(at(q, k), block(q, k) + q * chunkElems * elem, length(q, k) * elem);
    }
    ch.post(Counter::consumed, stamp(k));
  }
  // Nobody may leave while a peer still reads its region (the next call reuses it).
  if (rounds > 0) ch.waitAll(Counter::consumed, stamp(rounds - 1), deadline, "allreduce");
}

void singleCopyAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine, BufferView input,
                         BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                         const NodeParams& params, std::vector<std::byte>& scratch) {
  meet(ch, seq, mine, deadline, "allreduce");
  const int n = ch.size();
  const int me = ch.rank();
  const std::size_t elem = dtypeSize(input.dtype);
  const Partition part{input.count, n};
  // Scratch follows the message: one chunk, never longer than this rank's segment.
  const Chunking chunks{part.size(me), chunkElems(params.chunkBytes, elem, part.size(me))};
  growScratch(scratch, chunks.chunkElems * elem, ErrorContext{ch.worldRank(me), -1, "allreduce"},
              "single-copy node allreduce scratch",
              detail::concat("one chunk: SKYRING_SHM_CHUNK_BYTES=", params.chunkBytes,
                             ", capped by the message"));
  auto* const in = static_cast<std::byte*>(input.data);
  auto* const out = static_cast<std::byte*>(output.data);
  for (std::size_t c = 0; c < chunks.chunks(); ++c) {
    ch.throwIfAborted("allreduce");
    const std::size_t first = part.offset(me) + chunks.offset(c);
    const std::size_t len = chunks.size(c);
    const std::size_t at = first * elem;
    bool started = false;
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      ch.read(p, ch.call(p, seq).input + at, scratch.data(), len * elem, "allreduce");
      compression::reduce(op, input.dtype, out + at, started ? out + at : in + at, scratch.data(),
                          len);
      started = true;
    }
    if (op == ReduceOp::avg)
      compression::divideBy(input.dtype, out + at, len, static_cast<std::size_t>(n));
    for (int p = 0; p < n; ++p) {
      if (p != me) ch.write(p, ch.call(p, seq).output + at, out + at, len * elem, "allreduce");
    }
  }
  ch.finish(seq);
  ch.waitFinished(seq, deadline, "allreduce");
}

// Staged pipelines of the node level (nodeReduceScatter, nodeAllgather): the geometry of
// stagedAllreduce (chunk k of every segment per round, a ring of blocks in each rank's
// region, counters stamped with the call and the round).
struct Stages {
  Partition part;
  std::size_t elem;
  std::size_t chunkElems;
  std::size_t blockBytes;
  std::size_t depth;
  std::size_t rounds;
  Stages(const NodeChannel& ch, std::size_t count, DType dtype, const NodeParams& params)
      : part{count, ch.size()}, elem(dtypeSize(dtype)) {
    const std::size_t region = ch.region(ch.rank()).size();
    chunkElems = std::min(collectives::chunkElems(params.chunkBytes, elem, part.size(0)),
                          region / (2 * static_cast<std::size_t>(ch.size()) * elem));
    blockBytes = static_cast<std::size_t>(ch.size()) * chunkElems * elem;
    depth = region / blockBytes;
    rounds = (part.size(0) + chunkElems - 1) / chunkElems;
  }
  std::size_t length(int q, std::size_t k) const {
    const std::size_t done = k * chunkElems;
    return done >= part.size(q) ? 0 : std::min(chunkElems, part.size(q) - done);
  }
  std::size_t at(int q, std::size_t k) const { return (part.offset(q) + k * chunkElems) * elem; }
  std::byte* block(const NodeChannel& ch, int p, std::size_t k) const {
    return ch.region(p).data() + (k % depth) * blockBytes;
  }
};

std::uint64_t stampOf(std::uint64_t seq, std::size_t k) {
  return seq << 32 | (k + 1);
}

}  // namespace

namespace {

bool singleCopyFits(const NodeChannel& ch, const NodeParams& params, std::size_t bytes) {
  return ch.singleCopy() && params.singleCopyBytes != 0 && bytes >= params.singleCopyBytes;
}

}  // namespace

void nodeReduceScatter(NodeChannel& ch, std::uint64_t seq, std::uint32_t tag, BufferView input,
                       BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                       const NodeParams& params, std::vector<std::byte>& scratch) {
  using Counter = NodeChannel::Counter;
  NodeCall mine =
      makeCall(Opcode::allreduce, input.dtype, op, input.count, input.data, output.data);
  mine.pad = tag;
  if (ch.size() == 1) {
    if (output.data != input.data) std::memcpy(output.data, input.data, input.bytes());
    return;
  }
  meet(ch, seq, mine, deadline, "allreduce (node reduce-scatter)");
  const int me = ch.rank();
  if (singleCopyFits(ch, params, input.bytes())) {
    // Each rank reads its segment of every peer's input straight from the peer's memory.
    // No second synchronisation: a peer changes other segments of its buffers only in
    // nodeAllgather, which it enters after this rank (whose arrival there it waits for).
    const std::size_t elem = dtypeSize(input.dtype);
    const Partition part{input.count, ch.size()};
    const Chunking chunks{part.size(me), chunkElems(params.chunkBytes, elem, part.size(me))};
    growScratch(scratch, chunks.chunkElems * elem, ErrorContext{ch.worldRank(me), -1, "allreduce"},
                "node reduce-scatter scratch",
                detail::concat("one chunk: SKYRING_SHM_CHUNK_BYTES=", params.chunkBytes));
    auto* const in = static_cast<std::byte*>(input.data);
    auto* const out = static_cast<std::byte*>(output.data);
    for (std::size_t c = 0; c < chunks.chunks(); ++c) {
      ch.throwIfAborted("allreduce");
      const std::size_t at = (part.offset(me) + chunks.offset(c)) * elem;
      bool started = false;
      for (int p = 0; p < ch.size(); ++p) {
        if (p == me) continue;
        ch.read(p, ch.call(p, seq).input + at, scratch.data(), chunks.size(c) * elem, "allreduce");
        compression::reduce(op, input.dtype, out + at, started ? out + at : in + at, scratch.data(),
                            chunks.size(c));
        started = true;
      }
    }
    return;
  }
  const Stages st(ch, input.count, input.dtype, params);
  auto* const in = static_cast<const std::byte*>(input.data);
  auto* const out = static_cast<std::byte*>(output.data);
  const std::size_t stride = st.chunkElems * st.elem;
  for (std::size_t k = 0; k < st.rounds; ++k) {
    if (k >= st.depth)
      ch.waitAll(Counter::consumed, stampOf(seq, k - st.depth), deadline, "allreduce");
    std::byte* const own = st.block(ch, me, k);
    for (int q = 0; q < ch.size(); ++q) {
      if (q != me) std::memcpy(own + q * stride, in + st.at(q, k), st.length(q, k) * st.elem);
    }
    ch.post(Counter::copied, stampOf(seq, k));
    ch.waitAll(Counter::copied, stampOf(seq, k), deadline, "allreduce");
    // Straight into this rank's own segment of output: nobody else reads it here.
    std::byte* const result = out + st.at(me, k);
    bool started = false;
    for (int p = 0; p < ch.size(); ++p) {
      if (p == me) continue;
      compression::reduce(op, input.dtype, result, started ? result : in + st.at(me, k),
                          st.block(ch, p, k) + me * stride, st.length(me, k));
      started = true;
    }
    ch.post(Counter::consumed, stampOf(seq, k));
  }
  if (st.rounds > 0)
    ch.waitAll(Counter::consumed, stampOf(seq, st.rounds - 1), deadline, "allreduce");
}

void nodeAllgather(NodeChannel& ch, std::uint64_t seq, std::uint32_t tag, BufferView buffer,
                   ReduceOp op, transport::Clock::time_point deadline, const NodeParams& params) {
  using Counter = NodeChannel::Counter;
  if (ch.size() == 1) return;
  NodeCall mine =
      makeCall(Opcode::allreduce, buffer.dtype, op, buffer.count, buffer.data, buffer.data);
  mine.pad = tag;
  meet(ch, seq, mine, deadline, "allreduce (node allgather)");
  const int me = ch.rank();
  if (singleCopyFits(ch, params, buffer.bytes())) {
    // Every peer's segment straight from its buffer into this rank's; then nobody leaves
    // (and lets its caller touch the buffer) while a peer still reads it.
    const Partition part{buffer.count, ch.size()};
    const std::size_t elem = dtypeSize(buffer.dtype);
    for (int q = 0; q < ch.size(); ++q) {
      if (q == me || part.size(q) == 0) continue;
      const std::size_t at = part.offset(q) * elem;
      ch.read(q, ch.call(q, seq).output + at, static_cast<std::byte*>(buffer.data) + at,
              part.size(q) * elem, "allreduce");
    }
    ch.finish(seq);
    ch.waitFinished(seq, deadline, "allreduce");
    return;
  }
  const Stages st(ch, buffer.count, buffer.dtype, params);
  auto* const buf = static_cast<std::byte*>(buffer.data);
  for (std::size_t k = 0; k < st.rounds; ++k) {
    if (k >= st.depth)
      ch.waitAll(Counter::consumed, stampOf(seq, k - st.depth), deadline, "allreduce");
    std::memcpy(st.block(ch, me, k), buf + st.at(me, k), st.length(me, k) * st.elem);
    ch.post(Counter::copied, stampOf(seq, k));
    ch.waitAll(Counter::copied, stampOf(seq, k), deadline, "allreduce");
    for (int q = 0; q < ch.size(); ++q) {
      if (q != me) std::memcpy(buf + st.at(q, k), st.block(ch, q, k), st.length(q, k) * st.elem);
    }
    ch.post(Counter::consumed, stampOf(seq, k));
  }
  if (st.rounds > 0)
    ch.waitAll(Counter::consumed, stampOf(seq, st.rounds - 1), deadline, "allreduce");
}

bool nodeAllreduceFits(const NodeChannel& ch, std::size_t bytes) {
  // The slots path needs bytes <= slotBytes(); the pipelined one any size, as long as the
  // region holds two blocks of one 8-byte element per rank.
  return bytes <= ch.slotBytes() || ch.region(ch.rank()).size() >= 16 * std::size_t(ch.size());
}

void nodeAllreduce(NodeChannel& ch, std::uint64_t seq, BufferView input, BufferView output,
                   ReduceOp op, transport::Clock::time_point deadline, const NodeParams& params,
                   std::vector<std::byte>& scratch) {
  const NodeCall mine =
      makeCall(Opcode::allreduce, input.dtype, op, input.count, input.data, output.data);
  if (ch.size() == 1) {
    if (output.data != input.data) std::memcpy(output.data, input.data, input.bytes());
    if (op == ReduceOp::avg) compression::divideBy(input.dtype, output.data, input.count, 1);
    return;
  }
  const Contiguous buffers{static_cast<const std::byte*>(input.data),
                           static_cast<std::byte*>(output.data)};
  // The slots hold what the channel was made with, whatever this rank's setting says.
  if (input.bytes() <= std::min(params.smallBytes, ch.slotBytes())) {
    slotsAllreduce(ch, seq, mine, buffers, input.dtype, input.count, op, deadline);
  } else if (params.singleCopyBytes == 0 || input.bytes() < params.singleCopyBytes ||
             !ch.singleCopy()) {
    stagedAllreduce(ch, seq, mine, buffers, input.dtype, input.count, op, deadline, params);
  } else {
    singleCopyAllreduce(ch, seq, mine, input, output, op, deadline, params, scratch);
  }
}

void nodeAllreducePieces(NodeChannel& ch, std::uint64_t seq, std::span<const BufferView> pieces,
                         ReduceOp op, transport::Clock::time_point deadline,
                         const NodeParams& params) {
  const Scattered buffers(pieces);
  const DType dtype = pieces.front().dtype;
  const std::size_t count = buffers.bytes() / dtypeSize(dtype);
  // The same call as nodeAllreduce of the concatenation (node-mates may run either).
  const NodeCall mine =
      makeCall(Opcode::allreduce, dtype, op, count, pieces.front().data, pieces.front().data);
  if (ch.size() == 1) {
    if (op == ReduceOp::avg) {
      for (const BufferView& b : pieces)
        compression::divideBy(dtype, b.data, b.count, 1);
    }
    return;
  }
  if (buffers.bytes() <= std::min(params.smallBytes, ch.slotBytes())) {
    slotsAllreduce(ch, seq, mine, buffers, dtype, count, op, deadline);
  } else {
    stagedAllreduce(ch, seq, mine, buffers, dtype, count, op, deadline, params);
  }
}

void nodeBarrier(NodeChannel& ch, std::uint64_t seq, transport::Clock::time_point deadline) {
  meet(ch, seq, makeCall(Opcode::barrier, DType::u8, ReduceOp::sum, 0, nullptr, nullptr), deadline,
       "barrier");
}

}  // namespace skyring::collectives
