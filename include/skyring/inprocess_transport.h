// The in-process transport: the ranks of a group are threads of one process.
//
// Used by the tests and the in-process examples, and as the model every other transport
// is checked against. Sends are eager: the payload is copied into the matching posted
// receive, or into the receiver's queue of unexpected messages, so a send completes at
// once.
//
// Thread-safety: each rank's Transport is used by its own thread(s); the world object
// may be shared by all of them.
#pragma once

#include <memory>
#include <vector>

#include "skyring/transport.h"

namespace skyring::transport {

class InProcessWorld {
 public:
  explicit InProcessWorld(int size);
  ~InProcessWorld();
  InProcessWorld(const InProcessWorld&) = delete;
  InProcessWorld& operator=(const InProcessWorld&) = delete;

  int size() const noexcept;
  // The transport of one rank. The world must outlive every transport taken from it.
  std::shared_ptr<Transport> transport(int rank);
  // Simulates a crash of one rank: its peers' requests that involve it fail with
  // TransportError naming it, as a broken connection would.
  void kill(int rank) noexcept;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace skyring::transport
