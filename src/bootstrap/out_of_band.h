// The out-of-band channel a process uses to join the job: exchange a few bytes with
// every other rank (UCX worker addresses, hostnames) before any transport exists.
//
// Implementations: MPI (under mpirun; MPI is used for nothing else) and a TCP key-value
// store (torchrun-style variables; no MPI at all). Collective and blocking; one thread.
// Every wait is bounded by Config::initTimeout (start-up has its own timeout: ranks start
// late, and the collectives' timeout is usually shorter).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "skyring/config.h"

namespace skyring::bootstrap {

class OutOfBand {
 public:
  virtual ~OutOfBand() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  // Every rank's bytes, indexed by rank. Sizes may differ between ranks.
  // Waits at most Config::initTimeout and throws Timeout naming the ranks that did not
  // take part (or rank 0, when it is rank 0 that does not answer).
  virtual std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) = 0;
  virtual void barrier() = 0;
  // The job failed, or every rank has already said goodbye some other way: the destructor
  // then leaves at once instead of waiting for the other ranks (which may never come).
  // othersReading: this rank failed right after an exchange that the others may still be
  // reading (they reach the same verdict and leave too): the channel stays up for them a
  // little while (at most a second or two), so they see the verdict and not a closed channel.
  virtual void abandon(bool othersReading = false) noexcept { (void)othersReading; }
  // Every rank has said goodbye some other way (the runtime's barrier over the transport)
  // and this process may init() again at once: abandon(), and where the channel is served
  // by another rank, also wait (bounded) until that server is gone, so that a new join
  // cannot reach the old one (the TCP store would refuse it as a second claim on the rank).
  virtual void leaveAfterGoodbye() noexcept { abandon(); }
};

// Picks the channel from config.launch: MPI under mpirun, the TCP store under
// torchrun-style variables, a trivial one-rank channel otherwise. Throws InvalidArgument
// when the environment names a launcher this build cannot serve.
std::unique_ptr<OutOfBand> makeOutOfBand(const Config& config);

std::unique_ptr<OutOfBand> makeMpiOutOfBand(const Config& config);
std::unique_ptr<OutOfBand> makeStoreOutOfBand(const Config& config);

}  // namespace skyring::bootstrap
