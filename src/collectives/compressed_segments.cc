// PowerSGD over the tensors of a fused buffer (CollectiveOptions::segments), as PyTorch's
// DDP hook batches it: every tensor is its own matrix (rows = its first dimension, cols =
// the product of the others), never a slice of the buffer read as a square (issue 12: on a
// 64-64-10 MLP that mix-up stopped training).
//
//   1. Each rank computes P = M Q for every matrix of the batch (M: its own gradient plus
//      its residual), all into one buffer; the tensors that are not worth a matrix (1-D,
//      or factors no smaller than half the tensor: compression.h's size rule) ride in the
//      same buffer in full precision.
//   2. One plain allreduce (sum) of that buffer, the hierarchy's own choice of algorithm.
//   3. Orthonormalise each P, Q = M^T P, all into a second buffer: a second allreduce.
//   4. out = P Q^T / world size, the mean approximated; times the world size for sum.
// Two allreduces per batch whatever the number of tensors, each moving (rows + cols) x
// rank floats per matrix: the whole batch compressed at every level, which only lowers the
// traffic inside the clouds (the elementwise codecs compress the levels they are given).
// It runs where the hierarchy has a level across clouds to compress (as the other codecs).
//
// State: per tensor name, the residual M (error feedback) and the warm-start Q, in
// SegmentCodecState::powerSgd; the first Q comes from a seed derived from the name, so
// every rank starts alike.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "collectives/compression_cache.h"
#include "collectives/phases.h"
#include "compression/powersgd.h"
#include "compression/reduce.h"

namespace skyring {

namespace collectives {

void checkSegments(std::span<const TensorSegment> segments, std::size_t count,
                   const ErrorContext& ctx) {
  std::size_t at = 0;
  for (const TensorSegment& seg : segments) {
    SKYRING_CHECK_ARG(!seg.name.empty(), ctx, "a segment without a name");
    SKYRING_CHECK_ARG(seg.offset == at, ctx, "segment '", seg.name, "' starts at ", seg.offset,
                      " where the one before ends at ", at);
    if (!seg.shape.empty()) {
      std::size_t n = 1;
      for (std::int64_t d : seg.shape) {
        SKYRING_CHECK_ARG(d >= 0, ctx, "segment '", seg.name, "' has a negative dimension");
        n *= static_cast<std::size_t>(d);
      }
      SKYRING_CHECK_ARG(n == seg.count, ctx, "segment '", seg.name, "' of ", seg.count,
                        " elements has a shape of ", n);
    }
    at += seg.count;
  }
  SKYRING_CHECK_ARG(at == count, ctx, "segments cover ", at, " of the buffer's ", count,
                    " elements");
}

}  // namespace collectives

namespace {

std::uint64_t seedOfName(std::string_view name) {  // FNV-1a 64
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name)
    h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

struct Matrix {
  const TensorSegment* segment;
  collectives::SegmentCodecState* state;
  compression::PowerSgdShape shape;
  bool compressed;
  std::size_t at;  // in the factor buffers: P (or the raw values), then Q
  std::size_t qAt;
};

}  // namespace

bool Communicator::powerSgdSegments(BufferView input, BufferView output, ReduceOp op,
                                    const CollectiveOptions& options) {
  const ErrorContext ctx{rank_, -1, "allreduce"};
  if (input.dtype != DType::f32 || (op != ReduceOp::sum && op != ReduceOp::avg)) return false;
  const compression::Compressor* codec = codecFor(options);
  if (codec == nullptr || codec->codec() != compression::Codec::powersgd) return false;
  const CompressionLevels levels = options.compressionLevels.value_or(config_.compressionLevels);
  // PowerSGD in a cloud is an error, reported by the ordinary path.
  if (levels.cloud || !levels.crossCloud) return false;
  if (algorithmFor(options) != AllreduceAlgorithm::hierarchical || topology_->clouds() < 2) {
    return false;
  }
  SKYRING_CHECK_ARG(input.memory == MemoryKind::host && output.memory == MemoryKind::host, ctx,
                    "device memory: this communicator's transport moves host memory only");
  SKYRING_CHECK_ARG(input.count == output.count && input.dtype == output.dtype, ctx,
                    "input and output differ");
  SKYRING_CHECK_ARG(output.count == 0 || (input.data != nullptr && output.data != nullptr), ctx,
                    "a null buffer");
  collectives::checkSegments(options.segments, output.count, ctx);
  const std::string spec = codec->spec();
  const bool ef = codec->errorFeedback();

  std::vector<Matrix> matrices;
  std::size_t pSize = 0;
  std::size_t qSize = 0;
  {
    std::lock_guard lock(compression_->mutex);
    for (const TensorSegment& seg : options.segments) {
      Matrix m{&seg, &compression_->segments[{spec, std::string(seg.name)}], {}, false, 0, 0};
      m.compressed = compression::worthCompressing(*codec, seg.count, seg.shape);
      const std::size_t rows = m.compressed ? static_cast<std::size_t>(seg.shape[0]) : 0;
      if (m.compressed) {
        m.shape = compression::powerSgdMatrix(rows, seg.count / rows, codec->options().rank);
      }
      if (m.state->count != seg.count || m.state->rows != rows) {
        *m.state = collectives::SegmentCodecState();
        m.state->count = seg.count;
        m.state->rows = rows;
        m.state->powerSgd = codec->makeState(seg.count, seedOfName(seg.name));
      }
      m.at = pSize;
      pSize += m.compressed ? m.shape.pSize() : seg.count;
      m.qAt = qSize;
      qSize += m.compressed ? m.shape.qSize() : 0;
      matrices.push_back(m);
    }
  }
  if (input.data != output.data) std::memcpy(output.data, input.data, input.bytes());
  auto* data = static_cast<float*>(output.data);

  CollectiveOptions plain = options;
  plain.compression = {};
  plain.segments = {};
  std::vector<float> p(pSize);
  const double beta = codec->momentum();
  // Every level is compressed at once: the phases are the world's.
  const collectives::PhaseRecorder world{options.observer, "world", 0};
  std::optional<collectives::PhaseSpan> encodeP(std::in_place, world, "encode", *codec);
  encodeP->add(output.bytes(), pSize * sizeof(float));
  for (const Matrix& m : matrices) {
    const std::span<float> in(data + m.segment->offset, m.segment->count);
    if (m.compressed && beta > 0) {
      collectives::SegmentLayout one{{{0, in.size(), m.state}}, 0};
      collectives::momentumBefore(in.data(), in.size(), beta, &one, nullptr);
    }
    if (m.compressed) {
      compression::powerSgdComputeP(in, ef, m.shape, m.state->powerSgd,
                                    std::span(p).subspan(m.at, m.shape.pSize()));
    } else {
      std::copy(in.begin(), in.end(), p.begin() + static_cast<std::ptrdiff_t>(m.at));
    }
  }
  encodeP.reset();
  allreduce(view(std::span(p)), ReduceOp::sum, plain);
  std::vector<float> q(qSize);
  {
    collectives::PhaseSpan encodeQ(world, "encode", *codec);
    encodeQ.add(output.bytes(), qSize * sizeof(float));
    for (const Matrix& m : matrices) {
      if (!m.compressed) continue;
      compression::powerSgdComputeQ(m.shape, m.state->powerSgd,
                                    std::span(p).subspan(m.at, m.shape.pSize()),
                                    std::span(q).subspan(m.qAt, m.shape.qSize()));
    }
  }
  if (qSize > 0) allreduce(view(std::span(q)), ReduceOp::sum, plain);
  const auto n = static_cast<std::size_t>(size_);
  compression::divideBy(DType::f32, q.data(), q.size(), n);
  collectives::PhaseSpan decode(world, "decode", *codec);
  decode.add(output.bytes(), (pSize + qSize) * sizeof(float));
  for (const Matrix& m : matrices) {
    const std::span<float> out(data + m.segment->offset, m.segment->count);
    if (m.compressed) {
      // The mean over the world; scaled back to the sum for sum.
      compression::powerSgdDecompress(ef, m.shape, m.state->powerSgd,
                                      std::span(p).subspan(m.at, m.shape.pSize()),
                                      std::span(q).subspan(m.qAt, m.shape.qSize()), out);
      if (op == ReduceOp::sum) {
        for (float& v : out)
          v *= static_cast<float>(n);
      }
      if (beta > 0) {
        collectives::SegmentLayout one{{{0, out.size(), m.state}}, 0};
        collectives::momentumAfter(out.data(), out.size(), beta, &one, nullptr);
      }
    } else {
      std::copy_n(p.begin() + static_cast<std::ptrdiff_t>(m.at), out.size(), out.begin());
      if (op == ReduceOp::avg) compression::divideBy(DType::f32, out.data(), out.size(), n);
    }
    ++m.state->calls;
  }
  return true;
}

struct Communicator::CodecSnapshot {
  // Each named tensor's state as it was, or none when it had none yet.
  std::vector<
      std::pair<std::pair<std::string, std::string>, std::optional<collectives::SegmentCodecState>>>
      states;
};

std::shared_ptr<Communicator::CodecSnapshot> Communicator::saveCodecState(
    const CollectiveOptions& options) {
  const compression::Compressor* codec = codecFor(options);
  if (codec == nullptr || options.segments.empty()) return nullptr;
  auto snapshot = std::make_shared<CodecSnapshot>();
  const std::string spec = codec->spec();
  std::lock_guard lock(compression_->mutex);
  for (const TensorSegment& seg : options.segments) {
    std::pair<std::string, std::string> key{spec, std::string(seg.name)};
    auto it = compression_->segments.find(key);
    snapshot->states.emplace_back(std::move(key), it == compression_->segments.end()
                                                      ? std::nullopt
                                                      : std::optional(it->second));
  }
  return snapshot;
}

void Communicator::restoreCodecState(const std::shared_ptr<CodecSnapshot>& snapshot) {
  if (!snapshot) return;
  std::lock_guard lock(compression_->mutex);
  for (const auto& [key, state] : snapshot->states) {
    if (state) {
      compression_->segments[key] = *state;
    } else {
      compression_->segments.erase(key);
    }
  }
}

}  // namespace skyring
