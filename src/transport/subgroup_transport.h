// SubgroupTransport: a decorator that makes a subset of a parent transport's ranks look
// like a group of its own, so the collectives (which address ranks 0..size()-1 of their
// transport) can run inside one level of the topology (a cloud, the ranks holding one
// shard across clouds) without knowing about the parent.
//
// Numbering: group rank i is parent rank ranks[i]. The list is in whatever order the
// caller wants the group numbered (a ring order, say); it must hold distinct parent ranks
// and the parent's own rank. Request::peer() and every peer argument are group ranks;
// errors raised by the parent keep the parent's numbering in their message, and
// jobRank() maps group ranks to the job's, so what reaches a user names job ranks.
//
// Tags (transport/tag_layout.h): the group names itself in one field of every tag it
// passes on: a communicator (a process set) in the context field, a subgroup that an
// algorithm forms for one call in the level field. It fills the field only where the tag
// still holds 0; a tag that already names an inner group passes unchanged, so the
// innermost group names the message and groups nest to any depth. Messages of two groups
// over one parent are kept apart when their ids differ; context ids are unique in the job
// (agreed when a process set is created), level ids unique within one call (the
// algorithm's choice; hierarchical.h).
//
// Failure: abort() forwards to the parent, so a failure inside any group aborts the whole
// parent group (every rank of the world hears it, not only the subgroup's members: the
// other levels of a hierarchical call would otherwise wait for this one until their
// timeout). shutdown() only closes this view: later isend/irecv throw Aborted; requests
// already posted stay the parent's, and the parent is not shut down.
//
// Ownership: shares the parent. Thread-safety: as the parent.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "skyring/transport.h"

namespace skyring::transport {

class SubgroupTransport final : public Transport {
 public:
  // Which field of the tag names this group, and its id there.
  struct Scope {
    enum class Kind : std::uint8_t { context, level };
    Kind kind;
    std::uint32_t id;
    static Scope context(std::uint32_t id) { return {Kind::context, id}; }
    static Scope level(std::uint32_t id) { return {Kind::level, id}; }
  };

  // Throws InvalidArgument for an empty, repeated or out-of-range list, a list without
  // the parent's rank, or an id of 0 or beyond its field (tags::kRuntimeEngineContext,
  // kMaxLevel).
  // label names the group in messages (groupLabel()), e.g. "cloud level".
  SubgroupTransport(std::shared_ptr<Transport> parent, std::vector<int> ranks, Scope scope,
                    std::string label = {});

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return static_cast<int>(ranks_.size()); }
  // Parent rank of group rank `groupRank`.
  int parentRank(int groupRank) const;
  int jobRank(int rank) const noexcept override {
    return rank >= 0 && rank < size() ? parent_->jobRank(ranks_[static_cast<std::size_t>(rank)])
                                      : rank;
  }
  std::string groupLabel() const override { return label_; }

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override;
  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override;
  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    parent_->abort(kind, reason);
  }
  void shutdown() noexcept override { closed_.store(true); }

 private:
  Tag parentTag(Tag tag, int peer, const char* op) const;

  std::shared_ptr<Transport> parent_;
  std::vector<int> ranks_;
  Scope scope_;
  std::string label_;
  int rank_ = -1;
  std::atomic<bool> closed_{false};
};

}  // namespace skyring::transport
