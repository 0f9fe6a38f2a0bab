// join(): a rank out of data keeps taking part in the others' allreduces with zeros until
// every rank has joined (engine_impl.h, docs/engine.md). Engine thread only.
#include <cstdint>
#include <numeric>

#include "engine/engine_impl.h"

namespace skyring {

using engine::Pending;

bool Engine::Impl::joinable(const engine::Descriptor& d) const {
  return d.collective == engine::Collective::allreduce ||
         d.collective == engine::Collective::groupedAllreduce;
}

Pending& Engine::Impl::addGhost(const engine::Descriptor& d, std::optional<std::uint32_t> slot) {
  if (!joinable(d)) {
    Pending p;
    p.descriptor = d;
    p.state = std::make_shared<Handle::State>();
    p.submittedAt = engine::Clock::now();
    p.slot = slot;
    p.ghost = true;
    p.tensor = Tensor{BufferView{nullptr, 0, d.dtype, MemoryKind::host}, {0}, nullptr};
    return pending.insert_or_assign(d.name, std::move(p)).first->second;
  }
  // Element counts: the shape's product, or per member of a group ([count, per member its
  // number of dimensions and its dimensions]).
  std::vector<std::size_t> counts;
  if (d.collective == engine::Collective::groupedAllreduce) {
    for (std::size_t i = 1; i < d.shape.size();) {
      const auto dims = static_cast<std::size_t>(d.shape[i]);
      std::size_t c = 1;
      for (std::size_t k = 0; k < dims && i + 1 + k < d.shape.size(); ++k)
        c *= static_cast<std::size_t>(d.shape[i + 1 + k]);
      counts.push_back(c);
      i += 1 + dims;
    }
  } else {
    std::size_t c = 1;
    for (std::int64_t dim : d.shape)
      c *= static_cast<std::size_t>(dim);
    counts.push_back(c);
  }
  const std::size_t elemBytes = dtypeSize(d.dtype);
  auto zeros = std::make_shared<std::vector<std::byte>>(
      std::accumulate(counts.begin(), counts.end(), std::size_t{0}) * elemBytes);
  Pending p;
  p.descriptor = d;
  p.state = std::make_shared<Handle::State>();
  p.submittedAt = engine::Clock::now();
  p.slot = slot;
  p.ghost = true;
  std::size_t offset = 0;
  for (std::size_t c : counts) {
    const Tensor t{BufferView{zeros->data() + offset, c, d.dtype, MemoryKind::host}, {}, zeros};
    offset += c * elemBytes;
    if (d.collective == engine::Collective::groupedAllreduce) {
      p.members.push_back(t);
    } else {
      p.tensor = t;
    }
  }
  if (d.collective == engine::Collective::groupedAllreduce) {
    p.tensor = Tensor{BufferView{nullptr, 0, d.dtype, MemoryKind::host}, {0}, zeros};
  }
  return pending.insert_or_assign(d.name, std::move(p)).first->second;
}

bool Engine::Impl::settleJoin(const std::uint8_t* notJoined) {
  const auto n = static_cast<std::size_t>(comm.size());
  if (joinedBefore.size() != n) joinedBefore.assign(n, 0);
  bool all = true;
  int last = -1;
  for (std::size_t r = 0; r < n; ++r) {
    const bool joined = notJoined[r] == 0;
    all = all && joined;
    // The last to join: of the ranks that joined in this cycle, the highest (every rank
    // reads the same bytes, so every rank names the same one).
    if (joined && joinedBefore[r] == 0) last = static_cast<int>(r);
    joinedBefore[r] = joined ? 1 : 0;
  }
  if (!all) return false;
  if (last < 0) last = static_cast<int>(n) - 1;
  joinedBefore.assign(n, 0);
  for (auto it = pending.begin(); it != pending.end();) {
    it = it->second.ghost ? pending.erase(it) : std::next(it);
  }
  std::lock_guard lock(mutex);
  joinRequested = false;
  joinedHere = false;
  joinResult = last;
  joinDone.notify_all();
  return true;
}

}  // namespace skyring
