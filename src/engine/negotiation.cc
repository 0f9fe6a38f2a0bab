#include "engine/negotiation.h"

#include "engine/wire.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>

#include "skyring/error.h"

namespace skyring::engine {

namespace {}  // namespace

std::string Descriptor::describe() const {
  std::ostringstream os;
  if (collective == Collective::groupedAllreduce) {
    // shape: [count, per tensor its rank and dimensions]
    os << "group of " << (shape.empty() ? 0 : shape.front()) << ' ' << dtypeName(dtype);
    for (std::size_t i = 1; i < shape.size();) {
      const auto dims = static_cast<std::size_t>(shape[i]);
      os << '[';
      for (std::size_t k = 0; k < dims && i + 1 + k < shape.size(); ++k)
        os << (k ? "," : "") << shape[i + 1 + k];
      os << ']';
      i += 1 + dims;
    }
    os << ' ' << reduceOpName(op);
    if (!compression.empty()) os << " compressed " << compression;
    return os.str();
  }
  os << dtypeName(dtype) << '[';
  for (std::size_t i = 0; i < shape.size(); ++i)
    os << (i ? "," : "") << shape[i];
  os << "] ";
  if (collective == Collective::reducescatter) {
    os << "reducescatter " << reduceOpName(op);
  } else if (collective == Collective::broadcast) {
    os << "broadcast from " << root;
  } else if (collective == Collective::allgather) {
    os << "allgather";
  } else if (collective == Collective::alltoall) {
    os << "alltoall";
  } else {
    os << reduceOpName(op);
  }
  if (!compression.empty()) os << " compressed " << compression;
  return os.str();
}

void appendDescriptor(std::vector<std::byte>& out, const Descriptor& d) {
  putWire(out, d.name);
  putWire(out, static_cast<std::uint8_t>(d.dtype));
  putWire(out, static_cast<std::uint8_t>(d.op));
  putWire(out, static_cast<std::uint8_t>(d.collective));
  putWire(out, d.root);
  putWire(out, static_cast<std::uint32_t>(d.shape.size()));
  for (std::int64_t dim : d.shape)
    putWire(out, dim);
  putWire(out, d.compression);
}

std::vector<Descriptor> parseDescriptors(std::span<const std::byte> bytes, int fromRank, int rank) {
  WireReader in(bytes, fromRank, rank);
  std::vector<Descriptor> out;
  while (!in.done()) {
    Descriptor d;
    d.name = in.text();
    const auto dtype = in.get<std::uint8_t>();
    const auto op = in.get<std::uint8_t>();
    const auto collective = in.get<std::uint8_t>();
    d.root = in.get<std::int32_t>();
    const auto dims = in.get<std::uint32_t>();
    if (dtype >= std::size(kAllDTypes) || op >= std::size(kAllReduceOps) ||
        collective > kLastCollective ||
        dims > (collective == static_cast<std::uint8_t>(Collective::groupedAllreduce) ? (1u << 24)
                                                                                      : 64u)) {
      SKYRING_THROW(TransportError, (ErrorContext{rank, fromRank, "engine negotiation"}),
                    "malformed announcement from rank ", fromRank, " (dtype ", int{dtype}, ", op ",
                    int{op}, ", ", dims, " dimensions)");
    }
    d.dtype = static_cast<DType>(dtype);
    d.op = static_cast<ReduceOp>(op);
    d.collective = static_cast<Collective>(collective);
    for (std::uint32_t i = 0; i < dims; ++i)
      d.shape.push_back(in.get<std::int64_t>());
    d.compression = in.text();
    out.push_back(std::move(d));
  }
  return out;
}

Descriptor cacheKey(const Descriptor& d) {
  Descriptor key = d;
  if ((d.collective == Collective::allgather || d.collective == Collective::alltoall) &&
      !key.shape.empty()) {
    key.shape.front() = -1;
  }
  return key;
}

bool sameCall(const Descriptor& a, const Descriptor& b) {
  const bool ragged = a.collective == Collective::allgather || a.collective == Collective::alltoall;
  if (!ragged || a.collective != b.collective) return a == b;
  return a.name == b.name && a.dtype == b.dtype && a.shape.size() == b.shape.size() &&
         !a.shape.empty() && std::equal(a.shape.begin() + 1, a.shape.end(), b.shape.begin() + 1);
}

std::optional<std::uint32_t> ResponseCache::find(const Descriptor& d) const {
  auto it = bySlot_.find(d);
  if (it == bySlot_.end()) return std::nullopt;
  return it->second;
}

std::uint32_t ResponseCache::insert(const Descriptor& d) {
  if (auto slot = find(d)) return *slot;
  const auto slot = static_cast<std::uint32_t>(slots_.size());
  slots_.push_back(d);
  bySlot_.emplace(d, slot);
  return slot;
}

std::vector<Descriptor> Announcements::missing(int rank) const {
  std::vector<Descriptor> out;
  for (const auto& [name, perRank] : byName_) {
    if (perRank[static_cast<std::size_t>(rank)].has_value()) continue;
    for (const auto& d : perRank) {
      if (d) {
        out.push_back(*d);
        break;
      }
    }
  }
  return out;
}

std::vector<Announcements::Verdict> Announcements::add(int rank,
                                                       const std::vector<Descriptor>& list) {
  std::vector<Verdict> out;
  for (const Descriptor& d : list) {
    auto& perRank = byName_[d.name];
    perRank.resize(static_cast<std::size_t>(ranks_));
    perRank[static_cast<std::size_t>(rank)] = d;
    bool complete = true;
    bool agreed = true;
    for (const auto& p : perRank) {
      complete = complete && p.has_value();
      agreed = agreed && p.has_value() && sameCall(*p, *perRank.front());
    }
    if (!complete) continue;
    Verdict v;
    v.name = d.name;
    v.agreed = agreed;
    if (agreed) {
      v.descriptor = *perRank.front();
      for (const auto& p : perRank)
        v.firstDims.push_back(p->shape.empty() ? 1 : p->shape.front());
    } else {
      // Ranks grouped by what they submitted, each group in rank order.
      std::map<Descriptor, std::vector<int>> groups;
      for (int r = 0; r < ranks_; ++r)
        groups[*perRank[static_cast<std::size_t>(r)]].push_back(r);
      std::ostringstream os;
      os << "ranks submitted '" << d.name << "' differently:";
      const char* sep = " ";
      for (const auto& [desc, ranks] : groups) {
        os << sep << (ranks.size() == 1 ? "rank " : "ranks ");
        for (std::size_t i = 0; i < ranks.size(); ++i)
          os << (i ? "," : "") << ranks[i];
        os << " " << desc.describe();
        sep = "; ";
      }
      v.error = os.str();
    }
    byName_.erase(d.name);
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace skyring::engine
