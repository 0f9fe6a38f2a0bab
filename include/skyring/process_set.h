// A process set: a communicator over a subset of the world's ranks, with an engine of its
// own, as Horovod's process sets.
//
//   skyring::ProcessSet evens = runtime->addProcessSet({0, 2});  // every rank, same list
//   if (evens.included()) evens.engine().allreduceAsync("g", t, {}).wait();
//   runtime->removeProcessSet(evens);                             // every rank
//
// Created and removed collectively over the world (Runtime::addProcessSet): every rank
// calls it, with the same ranks, in the same order as the other creations and removals.
// Members get a Communicator (over the world's transport; with the members' topology, so
// an allreduce over a set that spans clouds is hierarchical, but without shared memory
// inside the node) and an Engine; a rank outside the set gets a handle that says so
// (included() is false) and throws InvalidArgument when asked for them. A set's
// collectives run concurrently with the world's and with other sets' (each communicator
// has its own context id in the tags, transport/tag_layout.h): only its members take part,
// the others are not involved at all.
//
// Ownership: a copyable handle; copies share one set. The set's communicator and engine
// live as long as a handle does, but stop at removal (Runtime::removeProcessSet): the
// engine's pending handles fail with Aborted (so do later submissions through an Engine&
// taken before), the communicator's calls throw Aborted, and communicator() and engine()
// throw InvalidArgument.
//
// Threads: any thread may use a set's engine (as any engine); its communicator as any
// Communicator (one thread per tag at a time).
//
// Failure: a failure inside a set (a dead member, a stall) aborts the world's transport as
// well, as a failure in a level of a hierarchical allreduce does: no rank is left waiting
// on a member that will never answer.
#pragma once

#include <memory>
#include <vector>

namespace skyring {

class Communicator;
class Engine;
class ProcessSetTable;  // src/runtime/process_sets.h

class ProcessSet {
 public:
  struct State;
  // An empty handle: in the process-wide API's process-set arguments, the world.
  ProcessSet() = default;
  explicit ProcessSet(std::shared_ptr<State> state) : state_(std::move(state)) {}

  bool valid() const noexcept { return state_ != nullptr; }
  // Identifies the set, the same on every rank (1..255; the world is 0). Reused after a
  // removal.
  int id() const;
  // The world ranks of the set, in the order given at creation: set rank i is ranks()[i].
  const std::vector<int>& ranks() const;
  int size() const;
  // Whether this rank is a member.
  bool included() const;
  // This rank's number in the set; -1 outside it.
  int rank() const;
  // True once the set was removed.
  bool removed() const;

  // The set's communicator and engine. Throw InvalidArgument on a rank outside the set
  // (naming it and the set's ranks), on an empty handle, and after removal.
  Communicator& communicator() const;
  Engine& engine() const;

 private:
  friend class ProcessSetTable;
  const State& state(const char* op) const;
  std::shared_ptr<State> state_;
};

}  // namespace skyring
