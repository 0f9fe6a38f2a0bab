#include "engine/negotiation.h"

#include <cstring>
#include <sstream>

#include "skyring/error.h"

namespace skyring::engine {

namespace {

template <typename T>
void put(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

// Reads from bytes at pos, refusing to run past the end (bytes come from the network).
class Reader {
 public:
  Reader(std::span<const std::byte> bytes, int from, int rank)
      : bytes_(bytes), from_(from), rank_(rank) {}
  bool done() const noexcept { return pos_ == bytes_.size(); }
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  std::string text(std::size_t n) {
    const std::byte* p = take(n);
    return {reinterpret_cast<const char*>(p), n};
  }

 private:
  const std::byte* take(std::size_t n) {
    if (n > bytes_.size() - pos_) {
      SKYRING_THROW(TransportError, (ErrorContext{rank_, from_, "engine negotiation"}),
                    "malformed announcement from rank ", from_, " (", bytes_.size(), " bytes)");
    }
    const std::byte* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
  int from_;
  int rank_;
};

}  // namespace

std::string Descriptor::describe() const {
  std::ostringstream os;
  os << dtypeName(dtype) << '[';
  for (std::size_t i = 0; i < shape.size(); ++i)
    os << (i ? "," : "") << shape[i];
  os << "] ";
  if (collective == Collective::broadcast) {
    os << "broadcast from " << root;
  } else {
    os << reduceOpName(op);
  }
  return os.str();
}

void appendDescriptor(std::vector<std::byte>& out, const Descriptor& d) {
  put(out, static_cast<std::uint32_t>(d.name.size()));
  const auto* p = reinterpret_cast<const std::byte*>(d.name.data());
  out.insert(out.end(), p, p + d.name.size());
  put(out, static_cast<std::uint8_t>(d.dtype));
  put(out, static_cast<std::uint8_t>(d.op));
  put(out, static_cast<std::uint8_t>(d.collective));
  put(out, d.root);
  put(out, static_cast<std::uint32_t>(d.shape.size()));
  for (std::int64_t dim : d.shape)
    put(out, dim);
}

std::vector<Descriptor> parseDescriptors(std::span<const std::byte> bytes, int fromRank, int rank) {
  Reader in(bytes, fromRank, rank);
  std::vector<Descriptor> out;
  while (!in.done()) {
    Descriptor d;
    d.name = in.text(in.get<std::uint32_t>());
    const auto dtype = in.get<std::uint8_t>();
    const auto op = in.get<std::uint8_t>();
    const auto collective = in.get<std::uint8_t>();
    d.root = in.get<std::int32_t>();
    const auto dims = in.get<std::uint32_t>();
    if (dtype >= std::size(kAllDTypes) || op >= std::size(kAllReduceOps) || collective > 1 ||
        dims > 64) {
      SKYRING_THROW(TransportError, (ErrorContext{rank, fromRank, "engine negotiation"}),
                    "malformed announcement from rank ", fromRank, " (dtype ", int{dtype}, ", op ",
                    int{op}, ", ", dims, " dimensions)");
    }
    d.dtype = static_cast<DType>(dtype);
    d.op = static_cast<ReduceOp>(op);
    d.collective = static_cast<Collective>(collective);
    for (std::uint32_t i = 0; i < dims; ++i)
      d.shape.push_back(in.get<std::int64_t>());
    out.push_back(std::move(d));
  }
  return out;
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
      agreed = agreed && p.has_value() && *p == *perRank.front();
    }
    if (!complete) continue;
    Verdict v;
    v.name = d.name;
    v.agreed = agreed;
    if (agreed) {
      v.descriptor = d;
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
