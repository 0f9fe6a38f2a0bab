#include "transport/subgroup_transport.h"

#include <algorithm>
#include <cstdint>

#include "transport/tag_layout.h"

namespace skyring::transport {
namespace {

// Presents the parent's request with the peer in group numbering, so an Exchange over
// the subgroup names group ranks consistently.
class GroupRequest final : public Request {
 public:
  GroupRequest(std::unique_ptr<Request> inner, int peer) : inner_(std::move(inner)), peer_(peer) {}
  bool test() override { return inner_->test(); }
  bool waitUntil(Clock::time_point deadline) override { return inner_->waitUntil(deadline); }
  int peer() const noexcept override { return peer_; }

 private:
  std::unique_ptr<Request> inner_;
  int peer_;
};

}  // namespace

SubgroupTransport::SubgroupTransport(std::shared_ptr<Transport> parent, std::vector<int> ranks,
                                     Scope scope, std::string label)
    : parent_(std::move(parent)),
      ranks_(std::move(ranks)),
      scope_(scope),
      label_(std::move(label)) {
  SKYRING_CHECK_ARG(parent_ != nullptr, {}, "SubgroupTransport needs a parent transport");
  const ErrorContext ctx{parent_->rank(), -1, "subgroup"};
  SKYRING_CHECK_ARG(!ranks_.empty(), ctx, "empty subgroup");
  const bool context = scope_.kind == Scope::Kind::context;
  const std::uint32_t maxId = context ? tags::kRuntimeEngineContext : tags::kMaxLevel;
  SKYRING_CHECK_ARG(scope_.id >= 1 && scope_.id <= maxId, ctx, context ? "context" : "level",
                    " id ", scope_.id, " outside 1..", maxId);
  std::vector<int> sorted = ranks_;
  std::sort(sorted.begin(), sorted.end());
  SKYRING_CHECK_ARG(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), ctx,
                    "subgroup lists a rank twice");
  SKYRING_CHECK_ARG(sorted.front() >= 0 && sorted.back() < parent_->size(), ctx,
                    "subgroup rank out of range of a parent group of ", parent_->size());
  const auto it = std::find(ranks_.begin(), ranks_.end(), parent_->rank());
  SKYRING_CHECK_ARG(it != ranks_.end(), ctx, "subgroup does not include rank ", parent_->rank());
  rank_ = static_cast<int>(it - ranks_.begin());
}

int SubgroupTransport::parentRank(int groupRank) const {
  SKYRING_CHECK_ARG(groupRank >= 0 && groupRank < size(),
                    (ErrorContext{rank_, groupRank, "subgroup"}), "peer ", groupRank,
                    " is not a rank of a subgroup of ", size());
  return ranks_[static_cast<std::size_t>(groupRank)];
}

Tag SubgroupTransport::parentTag(Tag tag, int peer, const char* op) const {
  SKYRING_CHECK(!closed_.load(), Aborted, (ErrorContext{rank_, peer, op}),
                "subgroup transport was shut down");
  return tags::nameIfUnnamed(
      tag, scope_.kind == Scope::Kind::context ? tags::kContext : tags::kLevel, scope_.id);
}

std::unique_ptr<Request> SubgroupTransport::isend(int peer, Tag tag,
                                                  std::span<const std::byte> data) {
  const int to = parentRank(peer);
  return std::make_unique<GroupRequest>(parent_->isend(to, parentTag(tag, peer, "send"), data),
                                        peer);
}

std::unique_ptr<Request> SubgroupTransport::irecv(int peer, Tag tag, std::span<std::byte> data) {
  const int from = parentRank(peer);
  return std::make_unique<GroupRequest>(parent_->irecv(from, parentTag(tag, peer, "recv"), data),
                                        peer);
}

}  // namespace skyring::transport
