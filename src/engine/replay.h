// Replay: the engine's steady state without a negotiation round trip.
//
// A training step submits the same gradients every time. Once two steps in a row ran the
// same plain allreduces (a step ends where a name runs a second time), the engine stops
// negotiating: it plans that step's fused batches
// once and, for every later step, runs each batch as soon as this rank has its tensors,
// with a flag "I had exactly this batch ready" riding in the data as one more element (or,
// where the reduction would not keep it exact, as a one-byte allreduce beside the data on
// a second tag), so a step costs no WAN round trip beyond its data. When some rank did not have the
// batch (a tensor not submitted, a new name, a join or a shutdown, a caller waiting on a tensor of
// a later batch), the byte says so on every rank alike: every rank drops that batch's result (the
// data went through a copy, so the tensors are untouched) and goes back to negotiating, where those
// tensors run as usual. docs/engine.md, "Replay".
//
// This file is the pure part (which steps replay, and their batches): no I/O, tested on its
// own. Every input comes from results every rank received alike, so every rank decides the
// same. Not thread-safe: the engine thread owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/negotiation.h"

namespace skyring::engine {

// One batch of a replayed step: the slots it runs as one collective (slot order as they
// ran), or none with only the flag (zero-element tensors such as the barrier: they need
// only the knowledge that every rank submitted them).
struct ReplayBatch {
  std::vector<std::uint32_t> slots;  // with data
  std::vector<std::uint32_t> empty;  // zero elements: completed by the flag alone
};

class StepRecorder {
 public:
  // A tensor of slot ran; replayable: a plain allreduce that this rank did not run with
  // zeros for a joined rank (the same answer on every rank). A slot that already ran in
  // this step starts the next step (a training loop submits each gradient once per step).
  void ran(std::uint32_t slot, bool replayable);
  // This step did something replay cannot repeat (a join, an allgather, ...).
  void spoil() { spoiled_ = true; }
  // After a cycle ran its tensors: when this step has run exactly the slots the step
  // before ran (each once; the order may differ, as it follows the cycles' timing),
  // returns them in the order they ran this time, and the next step starts; else nullopt.
  std::optional<std::vector<std::uint32_t>> repeated();
  // Ends the step here (the next ran() starts another).
  void endStep();
  // Forgets both steps (after a replay was dropped).
  void reset();

 private:
  std::vector<std::uint32_t> current_;
  std::vector<std::uint32_t> previous_;
  bool spoiled_ = false;
  bool previousSpoiled_ = true;
};

// The batches of a replayed step: slots (in the order they ran) fused as the engine fuses
// them (planFusion, threshold), split at every zero-element tensor, which becomes a
// flag-only batch of its own where it ran (so a barrier completes as soon as every rank
// has reached it, never after tensors submitted later). codecOf, when given, is the codec a
// slot's tensor is compressed with (empty: none; FusionItem::codec), so that compressed
// tensors fuse as they do when negotiated; inPlaceBytes as planFusion's.
std::vector<ReplayBatch> planReplay(
    const std::vector<std::uint32_t>& slots, const ResponseCache& cache, std::size_t threshold,
    const std::function<std::string(const Descriptor&)>& codecOf = nullptr,
    std::size_t inPlaceBytes = SIZE_MAX);

// Whether a batch of dtype and op over n ranks can carry the flag as one more element whose
// reduction is exact for any number of ranks that have the batch (sum and avg need n
// itself exact: at most 2048 ranks in f16, 256 in bf16, 127 in i8, 255 in u8); else the
// flag runs beside the data as an allreduce of its own, on another thread.
bool flagInBand(DType dtype, ReduceOp op, int n);
// Writes this rank's flag (mine: it has the batch) at out as one element of dtype, encoded
// so that op over every rank's flag says whether all had it.
void writeFlag(std::byte* out, DType dtype, ReduceOp op, bool mine);
// Reads the reduced flag back: true when every one of the n ranks had the batch.
bool readFlag(const std::byte* in, DType dtype, ReduceOp op, int n);

// Bytes of the tensor a descriptor describes (a plain allreduce's).
std::size_t descriptorBytes(const Descriptor& d);

}  // namespace skyring::engine
