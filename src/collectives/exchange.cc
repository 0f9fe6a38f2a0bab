#include "collectives/exchange.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>
#include <sstream>

namespace skyring::collectives {
namespace {

// Fixed-layout stall report; all ranks of a job share one architecture.
struct StallReport {
  std::int32_t rank;
  std::int32_t waitingOn;
  std::uint8_t opcode;
  std::uint8_t dtype;
  std::uint8_t op;
  std::uint8_t pad = 0;
  std::int32_t root;
  std::uint64_t count;
};
static_assert(sizeof(StallReport) == 24);

bool sameCall(const StallReport& a, const StallReport& b) {
  return a.opcode == b.opcode && a.dtype == b.dtype && a.op == b.op && a.root == b.root &&
         a.count == b.count;
}

CallSignature signatureOf(const StallReport& r) {
  return {static_cast<Opcode>(r.opcode), static_cast<DType>(r.dtype), static_cast<ReduceOp>(r.op),
          r.count, r.root};
}

std::string rankList(const std::set<int>& ranks) {
  std::ostringstream os;
  const char* sep = "";
  for (int r : ranks) {
    os << sep << r;
    sep = ", ";
  }
  return os.str();
}

}  // namespace

std::string_view opcodeName(Opcode op) noexcept {
  switch (op) {
    case Opcode::allreduce:
      return "allreduce";
    case Opcode::reduceScatter:
      return "reduce_scatter";
    case Opcode::allgather:
      return "allgather";
    case Opcode::broadcast:
      return "broadcast";
    case Opcode::barrier:
      return "barrier";
    case Opcode::alltoall:
      return "alltoall";
    case Opcode::control:
      break;
  }
  return "?";
}

std::string describe(const CallSignature& sig) {
  std::ostringstream os;
  os << opcodeName(sig.opcode) << "(count=" << sig.count << ", " << dtypeName(sig.dtype);
  if (sig.opcode == Opcode::allreduce || sig.opcode == Opcode::reduceScatter) {
    os << ", " << reduceOpName(sig.op);
  }
  if (sig.opcode == Opcode::broadcast) os << ", root=" << sig.root;
  os << ")";
  return os.str();
}

Exchange::Exchange(transport::Transport& transport, const Logger& logger, CallSignature signature,
                   std::uint32_t userTag, std::uint32_t sequence, std::chrono::milliseconds timeout)
    : transport_(transport),
      logger_(logger),
      signature_(signature),
      userTag_(userTag),
      sequence_(sequence),
      timeout_(timeout),
      rank_(transport.rank()),
      size_(transport.size()) {}

ErrorContext Exchange::context(int peer) const {
  const std::string label = transport_.groupLabel();
  return {transport_.jobRank(rank_), peer < 0 ? -1 : transport_.jobRank(peer),
          std::string(opcodeName(signature_.opcode)) + " #" + std::to_string(sequence_) +
              (label.empty() ? "" : " at the " + label)};
}

int Exchange::jobRank(int rank) const noexcept {
  return transport_.jobRank(rank);
}

transport::Tag Exchange::tag(bool control, std::uint32_t step) const {
  // Stall reports leave out operation and signature: ranks that disagree on those must
  // still hear each other to say so.
  if (control) return makeTag(true, Opcode::control, 0, userTag_, sequence_, step);
  return makeTag(false, signature_.opcode, signatureBits(signature_.dtype, signature_.op), userTag_,
                 sequence_, step);
}

std::unique_ptr<transport::Request> Exchange::send(int peer, std::uint32_t step,
                                                   std::span<const std::byte> data) {
  try {
    return transport_.isend(peer, tag(false, step), data);
  } catch (const Error& e) {
    fail(e, peer);
  }
}

std::unique_ptr<transport::Request> Exchange::recv(int peer, std::uint32_t step,
                                                   std::span<std::byte> data) {
  try {
    return transport_.irecv(peer, tag(false, step), data);
  } catch (const Error& e) {
    fail(e, peer);
  }
}

void Exchange::wait(std::unique_ptr<transport::Request>& request) {
  if (!request) return;
  const int peer = request->peer();
  // Most of the budget goes to waiting; the rest is kept for the diagnosis round.
  const auto budget = timeout_ - timeout_ / 5;
  bool done = false;
  try {
    done = request->waitUntil(transport::Clock::now() + budget);
  } catch (const Error& e) {
    fail(e, peer);
  }
  if (!done) diagnoseStall(peer);
  request.reset();
}

void Exchange::waitAll(std::vector<std::unique_ptr<transport::Request>>& requests) {
  for (auto& r : requests)
    wait(r);
  requests.clear();
}

void Exchange::fail(const Error& error, int peer) {
  if (error.peer() < 0) {
    // Another rank aborted the group: its message already names the culprit.
    throwError(error.kind(), error.detail(), context());
  }
  std::string detail = error.detail();
  SKYRING_LOG(logger_, error, describe(signature_), ": ", detail);
  transport_.abort(error.kind(), "rank " + std::to_string(jobRank(rank_)) + " in " +
                                     std::string(opcodeName(signature_.opcode)) + " #" +
                                     std::to_string(sequence_) + ": " + detail);
  throwError(error.kind(), detail, context(peer));
}

// The reports travel over the diagnosis group (the whole communicator, even when this
// exchange runs inside one level of it) and name job ranks: a rank stalled at the
// cross-cloud level waits on a peer that may itself be stalled inside its cloud, and only
// the whole group's reports show who is really missing.
void Exchange::diagnoseStall(int waitedOn) {
  transport::Transport& group = diagnosis_ != nullptr ? *diagnosis_ : transport_;
  const int n = group.size();
  const int me = group.rank();
  const StallReport mine{jobRank(rank_),
                         jobRank(waitedOn),
                         static_cast<std::uint8_t>(signature_.opcode),
                         static_cast<std::uint8_t>(signature_.dtype),
                         static_cast<std::uint8_t>(signature_.op),
                         0,
                         signature_.root,
                         signature_.count};
  SKYRING_LOG(logger_, warn, describe(signature_), " #", sequence_, ": no progress from rank ",
              jobRank(waitedOn), " for ", (timeout_ - timeout_ / 5).count(), " ms; asking peers");

  std::vector<StallReport> reports(static_cast<std::size_t>(n));
  std::vector<bool> have(static_cast<std::size_t>(n), false);
  reports[static_cast<std::size_t>(me)] = mine;
  have[static_cast<std::size_t>(me)] = true;
  std::set<int> dead;  // job ranks
  std::vector<std::unique_ptr<transport::Request>> sends;
  std::vector<std::unique_ptr<transport::Request>> recvs(static_cast<std::size_t>(n));
  const auto mineBytes = std::as_bytes(std::span(&mine, 1));
  std::optional<std::pair<ErrorKind, std::string>> remoteAbort;
  const transport::Tag control = tag(true, 0);
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    try {
      sends.push_back(group.isend(p, control, mineBytes));
      recvs[static_cast<std::size_t>(p)] = group.irecv(
          p, control, std::as_writable_bytes(std::span(&reports[static_cast<std::size_t>(p)], 1)));
    } catch (const Error& e) {
      if (e.peer() < 0)
        remoteAbort = {e.kind(), e.detail()};
      else
        dead.insert(group.jobRank(p));
    }
  }
  const auto deadline =
      transport::Clock::now() + std::max(timeout_ / 5, std::chrono::milliseconds(1));
  for (int p = 0; p < n && !remoteAbort; ++p) {
    auto& r = recvs[static_cast<std::size_t>(p)];
    if (!r) continue;
    try {
      have[static_cast<std::size_t>(p)] = r->waitUntil(deadline);
    } catch (const Error& e) {
      if (e.peer() < 0)
        remoteAbort = {e.kind(), e.detail()};
      else
        dead.insert(group.jobRank(p));
    }
  }
  recvs.clear();
  sends.clear();
  if (remoteAbort) throwError(remoteAbort->first, remoteAbort->second, context());

  std::ostringstream os;
  ErrorKind kind = ErrorKind::timeout;
  std::vector<int> mismatched;  // group ranks
  for (int p = 0; p < n; ++p) {
    if (have[static_cast<std::size_t>(p)] && !sameCall(reports[static_cast<std::size_t>(p)], mine))
      mismatched.push_back(p);
  }
  if (!mismatched.empty()) {
    kind = ErrorKind::transport;
    os << "ranks disagree about collective call #" << sequence_ << " (tag " << userTag_
       << "): rank " << mine.rank << " called " << describe(signature_);
    for (int p : mismatched) {
      const StallReport& r = reports[static_cast<std::size_t>(p)];
      os << ", rank " << r.rank << " called " << describe(signatureOf(r));
    }
  } else {
    std::set<int> waitedOnByAny;  // job ranks, as everything below
    std::set<int> reporters;
    for (int p = 0; p < n; ++p) {
      if (!have[static_cast<std::size_t>(p)]) continue;
      reporters.insert(reports[static_cast<std::size_t>(p)].rank);
      waitedOnByAny.insert(reports[static_cast<std::size_t>(p)].waitingOn);
    }
    std::set<int> missing;
    for (int w : waitedOnByAny) {
      if (!reporters.contains(w) && !dead.contains(w)) missing.insert(w);
    }
    if (!dead.empty()) {
      kind = ErrorKind::transport;
      os << "rank" << (dead.size() > 1 ? "s " : " ") << rankList(dead) << " died";
      if (!missing.empty()) os << "; ";
    }
    if (!missing.empty()) {
      os << "rank" << (missing.size() > 1 ? "s " : " ") << rankList(missing)
         << " did not take part in " << describe(signature_) << " #" << sequence_ << " within "
         << timeout_.count() << " ms";
    }
    if (dead.empty() && missing.empty()) {
      os << "ranks " << rankList(reporters) << " are all waiting on each other in "
         << describe(signature_) << " #" << sequence_
         << ": collective calls issued in a different order on different ranks?";
    }
    os << " (rank " << mine.rank << " waited on rank " << mine.waitingOn;
    if (reporters.size() > 1) os << "; " << reporters.size() << " ranks reported a stall";
    const std::string label = transport_.groupLabel();
    if (!label.empty()) os << "; at the " << label;
    os << ")";
  }
  const std::string detail = os.str();
  SKYRING_LOG(logger_, error, detail);
  transport_.abort(kind, detail);
  throwError(kind, detail, context(waitedOn));
}

}  // namespace skyring::collectives
