// ProcessSetTable: the process sets of one world (skyring/process_set.h), and the
// agreement that creates and removes them. The Runtime owns one; tests make one per rank
// over an in-process world.
//
// Agreement: add() and remove() are collective over the world and run on its user tag
// kAgreementTag (which nothing else may use): every rank allgathers what it was asked, and
// every rank reaches the same verdict from the same gathered lists, so a mismatch fails on
// every rank (InvalidArgument naming the ranks that differ from rank 0 and what each
// asked), never on some while others wait. Context ids (transport/tag_layout.h) are the
// lowest id not in use; every rank creates and removes the same sets in the same order, so
// they agree without being sent.
//
// Ownership: borrows the world Communicator (which must outlive the table) and shares the
// world's transport and topology with every set.
//
// Threads: add() and remove() are serialised by the table (collective calls must still be
// made in the same order on every rank); shutdown() from the owner's thread.
//
// Failure: a failed world collective during agreement propagates (the world is then
// aborted, as after any failed collective).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "skyring/communicator.h"
#include "skyring/engine.h"
#include "skyring/process_set.h"
#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring {

class ProcessSetTable {
 public:
  // The world's user tag of the agreement rounds (the engine's is 4095).
  static constexpr std::uint32_t kAgreementTag = 4094;

  ProcessSetTable(Communicator& world, std::shared_ptr<transport::Transport> worldTransport,
                  std::shared_ptr<const topology::Topology> topology,
                  EngineOptions engineOptions = {});
  // shutdown().
  ~ProcessSetTable();
  ProcessSetTable(const ProcessSetTable&) = delete;
  ProcessSetTable& operator=(const ProcessSetTable&) = delete;

  // Collective over the world. Throws InvalidArgument on every rank when the ranks disagree
  // on the list, or the agreed list is empty, repeats a rank or names one outside the world,
  // or every context id is in use.
  ProcessSet add(std::vector<int> ranks);
  // Collective over the world: stops the set's engine (collectively among its members),
  // closes its communicator and frees its id. Throws InvalidArgument on every rank when the
  // ranks name different sets, or a set that is not live (an empty handle, a removed set).
  void remove(const ProcessSet& set);
  // Stops every live set's engine (collective among each set's members, bounded as
  // Engine::shutdown); no world traffic. For the Runtime's destructor. noexcept.
  void shutdown() noexcept;

 private:
  // Every rank's list, gathered over the world (variable lengths).
  std::vector<std::vector<std::int64_t>> gather(const std::vector<std::int64_t>& mine,
                                                const char* op);

  Communicator& world_;
  std::shared_ptr<transport::Transport> worldTransport_;
  std::shared_ptr<const topology::Topology> topology_;
  EngineOptions engineOptions_;
  std::mutex mutex_;
  std::vector<ProcessSet> live_;  // guarded by mutex_
};

}  // namespace skyring
