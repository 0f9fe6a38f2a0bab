// The per-call context of a collective: tags, waits with a deadline, and what happens
// when a wait fails or stalls.
//
// Stall diagnosis: when a wait makes no progress for 4/5 of the timeout, the rank
// sends a report (who it waits on, and its call signature) to every peer of the diagnosis
// group (the exchange's own group, or the communicator a level of an algorithm belongs
// to: diagnoseOver) and collects theirs for the remaining 1/5. Ranks that are waited on but sent no
// report are the missing ones; differing signatures mean mismatched calls. Every rank reaches the
// same verdict, throws it, and aborts the group so that nobody is left waiting.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "collectives/phases.h"
#include "collectives/tags.h"
#include "skyring/buffer_view.h"
#include "skyring/error.h"
#include "skyring/logging.h"
#include "skyring/reduce_op.h"
#include "skyring/transport.h"

namespace skyring::collectives {

struct CallSignature {
  Opcode opcode;
  DType dtype;
  ReduceOp op;
  std::uint64_t count;
  std::int32_t root;
};

std::string_view opcodeName(Opcode op) noexcept;
std::string describe(const CallSignature& sig);

class Exchange {
 public:
  Exchange(transport::Transport& transport, const Logger& logger, CallSignature signature,
           std::uint32_t userTag, std::uint32_t sequence, std::chrono::milliseconds timeout);

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  // rank's number in the job (group ranks may be positions inside a level); every
  // message names ranks this way.
  int jobRank(int rank) const noexcept;
  // Runs the stall diagnosis over `group` (which holds this exchange's ranks, e.g. the
  // communicator this level belongs to) instead of over this exchange's own transport.
  // Every exchange of one call must use the same diagnosis group.
  void diagnoseOver(transport::Transport& group) noexcept { diagnosis_ = &group; }
  const CallSignature& signature() const noexcept { return signature_; }
  // Where the phases of this exchange's level go (phases.h); none by default.
  void recordPhases(const PhaseRecorder& recorder) noexcept { phases_ = recorder; }
  const PhaseRecorder& phases() const noexcept { return phases_; }
  ErrorContext context(int peer = -1) const;

  std::unique_ptr<transport::Request> send(int peer, std::uint32_t step,
                                           std::span<const std::byte> data);
  std::unique_ptr<transport::Request> recv(int peer, std::uint32_t step, std::span<std::byte> data);
  std::unique_ptr<transport::Request> send(int peer, std::uint32_t step, BufferView v) {
    return send(peer, step, std::span<const std::byte>(v.byteSpan()));
  }
  std::unique_ptr<transport::Request> recv(int peer, std::uint32_t step, BufferView v) {
    return recv(peer, step, v.byteSpan());
  }

  // Waits for one request (diagnosing a stall, translating failures) and resets it.
  void wait(std::unique_ptr<transport::Request>& request);
  void waitAll(std::vector<std::unique_ptr<transport::Request>>& requests);
  // A wait of this call outside the exchange (a node channel phase) made no progress for
  // 4/5 of the timeout, waiting on rank waitedOn: joins the call's stall diagnosis as a
  // stalled wait here would, and throws the verdict every rank reaches.
  [[noreturn]] void stalledOn(int waitedOn) { diagnoseStall(waitedOn); }

 private:
  [[noreturn]] void fail(const Error& error, int peer);
  [[noreturn]] void diagnoseStall(int waitedOn);
  transport::Tag tag(bool control, std::uint32_t step) const;

  transport::Transport& transport_;
  transport::Transport* diagnosis_ = nullptr;  // null: transport_
  const Logger& logger_;
  CallSignature signature_;
  std::uint32_t userTag_;
  std::uint32_t sequence_;
  std::chrono::milliseconds timeout_;
  int rank_;
  int size_;
  PhaseRecorder phases_;
};

}  // namespace skyring::collectives
