#include "runtime/process_sets.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>

#include "skyring/error.h"
#include "skyring/logging.h"
#include "skyring/runtime.h"
#include "transport/subgroup_transport.h"
#include "transport/tag_layout.h"

namespace skyring {

struct ProcessSet::State {
  int id = 0;
  std::vector<int> ranks;  // world ranks, in set order
  int worldRank = -1;
  int rank = -1;  // in the set; -1 outside it
  std::atomic<bool> removed{false};
  // Members only; declared so that the engine goes first, then the communicators.
  std::shared_ptr<transport::SubgroupTransport> transport;
  std::unique_ptr<Communicator> comm;  // communicator(): primary tag 0
  // The engine's own, on its tag (as the Runtime's engine): the set's algorithm choice
  // applies there, and communicator() stays free for direct calls from other threads.
  std::unique_ptr<Communicator> engineComm;
  std::unique_ptr<Engine> engine;
};

const ProcessSet::State& ProcessSet::state(const char* op) const {
  SKYRING_CHECK_ARG(state_ != nullptr, (ErrorContext{-1, -1, op}),
                    "an empty ProcessSet handle (the world is not a process set: use "
                    "Runtime::world() and Runtime::engine())");
  return *state_;
}

int ProcessSet::id() const {
  return state("ProcessSet::id").id;
}
const std::vector<int>& ProcessSet::ranks() const {
  return state("ProcessSet::ranks").ranks;
}
int ProcessSet::size() const {
  return static_cast<int>(state("ProcessSet::size").ranks.size());
}
bool ProcessSet::included() const {
  return state("ProcessSet::included").rank >= 0;
}
int ProcessSet::rank() const {
  return state("ProcessSet::rank").rank;
}
bool ProcessSet::removed() const {
  return state("ProcessSet::removed").removed.load();
}

namespace {

template <typename T>
std::string listText(const std::vector<T>& list) {
  std::ostringstream os;
  os << '{';
  for (std::size_t i = 0; i < list.size(); ++i)
    os << (i == 0 ? "" : ", ") << list[i];
  os << '}';
  return os.str();
}

std::string ranksText(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (std::size_t i = 0; i < ranks.size(); ++i)
    os << (i == 0 ? "" : ", ") << ranks[i];
  return os.str();
}

// Empty when every rank gave what rank 0 gave; else which ranks differ from rank 0, and what
// each group of ranks gave (describe(list) in words). The same text on every rank.
template <typename Describe>
std::string disagreement(const std::vector<std::vector<std::int64_t>>& all, Describe describe) {
  std::vector<int> differ;
  std::map<std::vector<std::int64_t>, std::vector<int>> byList;
  std::vector<std::vector<std::int64_t>> order;  // distinct lists by first appearance
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r] != all[0]) differ.push_back(static_cast<int>(r));
    auto [it, fresh] = byList.try_emplace(all[r]);
    if (fresh) order.push_back(all[r]);
    it->second.push_back(static_cast<int>(r));
  }
  if (differ.empty()) return {};
  std::string text =
      ranksText(differ) + (differ.size() == 1 ? " differs" : " differ") + " from rank 0 (";
  for (std::size_t i = 0; i < order.size(); ++i)
    text += (i == 0 ? "" : "; ") + ranksText(byList[order[i]]) + ": " + describe(order[i]);
  return text + ")";
}

}  // namespace

Communicator& ProcessSet::communicator() const {
  const State& s = state("ProcessSet::communicator");
  const ErrorContext ctx{s.worldRank, -1, "process set " + std::to_string(s.id)};
  SKYRING_CHECK_ARG(s.rank >= 0, ctx, "rank ", s.worldRank, " is not a member of process set ",
                    s.id, " (ranks ", listText(s.ranks), ")");
  SKYRING_CHECK_ARG(!s.removed.load(), ctx, "process set ", s.id, " was removed");
  return *s.comm;
}

Engine& ProcessSet::engine() const {
  communicator();  // the same checks
  return *state_->engine;
}

ProcessSetTable::ProcessSetTable(Communicator& world,
                                 std::shared_ptr<transport::Transport> worldTransport,
                                 std::shared_ptr<const topology::Topology> topology,
                                 EngineOptions engineOptions)
    : world_(world),
      worldTransport_(std::move(worldTransport)),
      topology_(std::move(topology)),
      engineOptions_(engineOptions) {}

ProcessSetTable::~ProcessSetTable() {
  shutdown();
}

std::vector<std::vector<std::int64_t>> ProcessSetTable::gather(
    const std::vector<std::int64_t>& mine, const char* op) {
  const auto n = static_cast<std::size_t>(world_.size());
  CollectiveOptions options;
  options.tag = kAgreementTag;
  std::int64_t length = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> lengths(n);
  world_.allgather(BufferView{&length, 1, DType::i64, MemoryKind::host},
                   BufferView{lengths.data(), n, DType::i64, MemoryKind::host}, options);
  const std::int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  SKYRING_CHECK_ARG(longest <= std::max(world_.size(), 2), (ErrorContext{world_.rank(), -1, op}),
                    "a rank asked with a list of ", longest, " ranks, more than the world's ",
                    world_.size());
  const auto width = static_cast<std::size_t>(longest);
  std::vector<std::int64_t> padded(width, -1);
  std::copy(mine.begin(), mine.end(), padded.begin());
  std::vector<std::int64_t> everyone(width * n);
  if (width > 0) {
    world_.allgather(BufferView{padded.data(), width, DType::i64, MemoryKind::host},
                     BufferView{everyone.data(), everyone.size(), DType::i64, MemoryKind::host},
                     options);
  }
  std::vector<std::vector<std::int64_t>> all(n);
  for (std::size_t r = 0; r < n; ++r) {
    const auto begin = everyone.begin() + static_cast<std::ptrdiff_t>(r * width);
    all[r].assign(begin, begin + lengths[r]);
  }
  return all;
}

ProcessSet ProcessSetTable::add(std::vector<int> ranks) {
  std::lock_guard lock(mutex_);
  const int me = world_.rank();
  const ErrorContext ctx{me, -1, "addProcessSet"};
  const auto all = gather(std::vector<std::int64_t>(ranks.begin(), ranks.end()), "addProcessSet");
  const std::string differ =
      disagreement(all, [](const std::vector<std::int64_t>& l) { return listText(l); });
  SKYRING_CHECK_ARG(differ.empty(), ctx, "the ranks disagree on the process set to add: ", differ);
  // From here every rank holds the same list, so every check below has the same verdict.
  SKYRING_CHECK_ARG(!ranks.empty(), ctx, "a process set needs at least one rank");
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  SKYRING_CHECK_ARG(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), ctx,
                    "process set ", listText(ranks), " lists a rank twice");
  SKYRING_CHECK_ARG(sorted.front() >= 0 && sorted.back() < world_.size(), ctx, "process set ",
                    listText(ranks), " names a rank outside the world of ", world_.size());
  int id = 1;
  for (; id <= static_cast<int>(tags::kMaxContext); ++id) {
    const bool used =
        std::any_of(live_.begin(), live_.end(), [&](const ProcessSet& s) { return s.id() == id; });
    if (!used) break;
  }
  SKYRING_CHECK_ARG(id <= static_cast<int>(tags::kMaxContext), ctx, "all ", tags::kMaxContext,
                    " process sets are in use; remove one first");

  auto state = std::make_shared<ProcessSet::State>();
  state->id = id;
  state->ranks = ranks;
  state->worldRank = me;
  const auto at = std::find(ranks.begin(), ranks.end(), me);
  if (at != ranks.end()) {
    state->rank = static_cast<int>(at - ranks.begin());
    state->transport = std::make_shared<transport::SubgroupTransport>(
        worldTransport_, ranks,
        transport::SubgroupTransport::Scope::context(static_cast<std::uint32_t>(id)),
        "process set " + std::to_string(id));
    std::shared_ptr<const topology::Topology> topology;
    if (topology_) {
      std::vector<topology::RankRecord> records;
      for (int r : ranks)
        records.push_back(topology_->record(r));
      topology = std::make_shared<const topology::Topology>(std::move(records), topology_->costs());
    }
    Config quiet = world_.config();
    quiet.warnings.clear();  // the world said them
    state->comm = std::make_unique<Communicator>(state->transport, quiet, nullptr, topology);
    Config engineConfig = quiet;
    // SKYRING_TIMELINE names the world engine's trace; a set's would write over it, so a
    // set's trace starts only when asked (engine().startTimeline).
    engineConfig.timeline.clear();
    state->engineComm =
        std::make_unique<Communicator>(state->transport, std::move(engineConfig), nullptr,
                                       std::move(topology), engineOptions_.tag);
    state->engine = std::make_unique<Engine>(*state->engineComm, engineOptions_);
  }
  ProcessSet set(std::move(state));
  live_.push_back(set);
  return set;
}

void ProcessSetTable::remove(const ProcessSet& set) {
  std::lock_guard lock(mutex_);
  const ErrorContext ctx{world_.rank(), -1, "removeProcessSet"};
  const auto live = std::find_if(live_.begin(), live_.end(), [&](const ProcessSet& s) {
    return set.valid() && s.state_ == set.state_;
  });
  // Every rank says which set it was given, and whether that is a live one here (a stale
  // handle of a removed set may carry a reused id).
  const std::int64_t id = set.valid() ? set.id() : 0;
  const std::vector<std::int64_t> mine = {id, live != live_.end() ? 1 : 0};
  const auto all = gather(mine, "removeProcessSet");
  const auto describe = [](const std::vector<std::int64_t>& l) {
    if (l.size() != 2) return std::string("?");
    if (l[0] == 0) return std::string("no set (an empty handle)");
    return "set " + std::to_string(l[0]) + (l[1] != 0 ? "" : " (not live)");
  };
  const std::string differ = disagreement(all, describe);
  SKYRING_CHECK_ARG(differ.empty(), ctx,
                    "the ranks disagree on the process set to remove: ", differ);
  SKYRING_CHECK_ARG(live != live_.end(), ctx, "cannot remove ", describe(mine),
                    ": not a live process set");

  ProcessSet::State& s = *live->state_;
  if (s.engine) s.engine->shutdown();  // collective among the members
  if (s.transport) s.transport->shutdown();
  s.removed.store(true);
  live_.erase(live);
  // Nobody reuses the id before every member has stopped using it.
  CollectiveOptions options;
  options.tag = kAgreementTag;
  options.timeout = world_.config().timeout + world_.config().initTimeout;
  world_.barrier(options);
}

void ProcessSetTable::shutdown() noexcept {
  std::lock_guard lock(mutex_);
  for (auto& set : live_) {
    ProcessSet::State& s = *set.state_;
    try {
      if (s.engine) s.engine->shutdown();
    } catch (const std::exception& e) {
      SKYRING_LOG(world_.logger(), warn, "process set ", s.id, ": ", e.what());
    }
    if (s.transport) s.transport->shutdown();
    s.removed.store(true);
  }
  live_.clear();
}

// Runtime's process sets live here rather than in runtime.cc: the table is their home.
ProcessSet Runtime::addProcessSet(std::vector<int> ranks) {
  return processSets_->add(std::move(ranks));
}

void Runtime::removeProcessSet(const ProcessSet& set) {
  processSets_->remove(set);
}

}  // namespace skyring
