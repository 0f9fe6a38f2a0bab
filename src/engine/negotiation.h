// The engine's negotiation state, kept identical on every rank: the response cache (a slot
// number per tensor descriptor) and the announcements of names not cached yet. Both change
// only through data every rank has received alike (the results of the cycle's collectives,
// processed in rank order), so slot numbers and verdicts agree without a coordinator.
//
// Pure logic, no I/O: tested on its own. Not thread-safe: the engine thread owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"

namespace skyring::engine {

enum class Collective : std::uint8_t {
  allreduce,
  broadcast,
  allgather,
  // Several tensors of one dtype as one unit; shape lists them: [count, then per tensor its
  // number of dimensions and its dimensions].
  groupedAllreduce,
  reducescatter,
  alltoall,  // the first dimension may differ between ranks, as for allgather
};
inline constexpr std::uint8_t kLastCollective = 5;

// What every rank must submit alike under one name.
struct Descriptor {
  std::string name;
  DType dtype = DType::f32;
  ReduceOp op = ReduceOp::sum;  // the reductions only (sum for the others)
  std::vector<std::int64_t> shape;
  Collective collective = Collective::allreduce;
  std::int32_t root = 0;  // broadcast only (0 for the others)
  // allreduce and grouped allreduce: the canonical codec spec the tensor asked for, once
  // resolved (kDefaultCompression to SKYRING_COMPRESSION); empty for none.
  std::string compression{};

  bool operator==(const Descriptor&) const = default;
  auto operator<=>(const Descriptor&) const = default;
  // "f32[4,5] sum", "f32[4,5] broadcast from 1" or "f32[4,5] allgather", for errors.
  std::string describe() const;
};

// Whether two ranks' descriptors of one name describe the same call: equal, except that
// an allgather's or alltoall's first dimension may differ between ranks.
bool sameCall(const Descriptor& a, const Descriptor& b);

// The key of d in the response cache: d, with the first dimension -1 for collectives whose
// first dimension may differ between ranks (allgather, alltoall).
Descriptor cacheKey(const Descriptor& d);

// Appends d to out in the wire format; parseDescriptors reads a concatenation back.
void appendDescriptor(std::vector<std::byte>& out, const Descriptor& d);
// Throws TransportError naming fromRank when the bytes are not a well-formed list.
std::vector<Descriptor> parseDescriptors(std::span<const std::byte> bytes, int fromRank, int rank);

// Slot numbers of agreed descriptors, in the order they were agreed (never reused).
class ResponseCache {
 public:
  std::optional<std::uint32_t> find(const Descriptor& d) const;
  // The slot of d, adding it when missing.
  std::uint32_t insert(const Descriptor& d);
  const Descriptor& at(std::uint32_t slot) const { return slots_[slot]; }
  std::size_t size() const noexcept { return slots_.size(); }

 private:
  std::vector<Descriptor> slots_;
  std::map<Descriptor, std::uint32_t> bySlot_;
};

// Names that some ranks announced and others have not yet: once every rank has announced
// a name, a verdict says whether they agree.
class Announcements {
 public:
  explicit Announcements(int ranks) : ranks_(ranks) {}

  struct Verdict {
    std::string name;
    bool agreed = false;
    Descriptor descriptor;                // when agreed (an allgather's: rank 0's)
    std::vector<std::int64_t> firstDims;  // when agreed: every rank's first dimension
    std::string error;                    // when not: every rank's descriptor, naming the ranks
  };

  bool contains(const std::string& name) const { return byName_.count(name) != 0; }
  // Names some rank announced and rank has not: for each, the first announced descriptor.
  std::vector<Descriptor> missing(int rank) const;
  // Records what rank announced; returns the names it completed, in list order. Call for
  // ranks 0..n-1 in order with the same lists on every rank to get the same verdicts.
  std::vector<Verdict> add(int rank, const std::vector<Descriptor>& list);

 private:
  int ranks_;
  std::map<std::string, std::vector<std::optional<Descriptor>>> byName_;
};

}  // namespace skyring::engine
