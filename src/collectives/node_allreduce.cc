#include <cstring>
#include <sstream>

#include "collectives/exchange.h"
#include "collectives/node_algorithms.h"
#include "collectives/ring.h"
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

bool sameCall(const NodeCall& a, const NodeCall& b) {
  return a.opcode == b.opcode && a.dtype == b.dtype && a.op == b.op && a.count == b.count;
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

void slotsAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine, BufferView input,
                    BufferView output, ReduceOp op, transport::Clock::time_point deadline) {
  std::memcpy(ch.slot(ch.rank(), seq).data(), input.data, input.bytes());
  meet(ch, seq, mine, deadline, "allreduce");
  const int n = ch.size();
  compression::reduce(op, input.dtype, output.data, ch.slot(0, seq).data(), ch.slot(1, seq).data(),
                      input.count);
  for (int p = 2; p < n; ++p)
    compression::reduce(op, input.dtype, output.data, output.data, ch.slot(p, seq).data(),
                        input.count);
  if (op == ReduceOp::avg)
    compression::divideBy(input.dtype, output.data, input.count, static_cast<std::size_t>(n));
}

void stagedAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine, BufferView input,
                     BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                     const NodeParams& params) {
  const int n = ch.size();
  const int me = ch.rank();
  const std::size_t elem = dtypeSize(input.dtype);
  const Partition part{input.count, n};
  auto* const in = static_cast<const std::byte*>(input.data);
  auto* const out = static_cast<std::byte*>(output.data);
  std::byte* const own = ch.slot(me, seq).data();
  // Peers read segment q != me of this slot; segment me only ever holds the result.
  for (int q = 0; q < n; ++q) {
    const std::size_t at = part.offset(q) * elem;
    if (q != me) std::memcpy(own + at, in + at, part.size(q) * elem);
  }
  meet(ch, seq, mine, deadline, "allreduce");
  // Segment me, chunk by chunk: reduce this rank's input with every peer's slot into this
  // rank's slot (for the peers), then copy the chunk out while it is still in cache.
  const Chunking chunks{part.size(me), std::max<std::size_t>(1, params.chunkBytes / elem)};
  for (std::size_t c = 0; c < chunks.chunks(); ++c) {
    const std::size_t at = (part.offset(me) + chunks.offset(c)) * elem;
    const std::size_t len = chunks.size(c);
    bool started = false;
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      compression::reduce(op, input.dtype, own + at, started ? own + at : in + at,
                          ch.slot(p, seq).data() + at, len);
      started = true;
    }
    if (op == ReduceOp::avg)
      compression::divideBy(input.dtype, own + at, len, static_cast<std::size_t>(n));
    std::memcpy(out + at, own + at, len * elem);
  }
  ch.finish(seq);
  ch.waitFinished(seq, deadline, "allreduce");
  for (int q = 0; q < n; ++q) {
    const std::size_t at = part.offset(q) * elem;
    if (q != me) std::memcpy(out + at, ch.slot(q, seq).data() + at, part.size(q) * elem);
  }
}

void singleCopyAllreduce(NodeChannel& ch, std::uint64_t seq, const NodeCall& mine, BufferView input,
                         BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                         const NodeParams& params, std::vector<std::byte>& scratch) {
  meet(ch, seq, mine, deadline, "allreduce");
  const int n = ch.size();
  const int me = ch.rank();
  const std::size_t elem = dtypeSize(input.dtype);
  const Partition part{input.count, n};
  const Chunking chunks{part.size(me), std::max<std::size_t>(1, params.chunkBytes / elem)};
  if (scratch.size() < chunks.chunkElems * elem) scratch.resize(chunks.chunkElems * elem);
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

}  // namespace

bool nodeAllreduceFits(const NodeChannel& ch, std::size_t bytes) {
  return bytes <= ch.slotBytes() || ch.singleCopy();
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
  if (input.bytes() <= params.smallBytes) {
    slotsAllreduce(ch, seq, mine, input, output, op, deadline);
  } else if (input.bytes() <= ch.slotBytes()) {
    stagedAllreduce(ch, seq, mine, input, output, op, deadline, params);
  } else {
    singleCopyAllreduce(ch, seq, mine, input, output, op, deadline, params, scratch);
  }
}

void nodeBarrier(NodeChannel& ch, std::uint64_t seq, transport::Clock::time_point deadline) {
  meet(ch, seq, makeCall(Opcode::barrier, DType::u8, ReduceOp::sum, 0, nullptr, nullptr), deadline,
       "barrier");
}

}  // namespace skyring::collectives
