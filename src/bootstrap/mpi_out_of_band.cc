// Out-of-band exchange over MPI: MPI_Allgatherv of the bytes. MPI is initialised here
// only if the program has not done it, and finalised only if it was initialised here.
#include <mpi.h>

#include "bootstrap/out_of_band.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

#define SKYRING_MPI_CHECK(expr, rank)                                                  \
  do {                                                                                 \
    const int rc_ = (expr);                                                            \
    if (rc_ != MPI_SUCCESS) {                                                          \
      char msg_[MPI_MAX_ERROR_STRING];                                                 \
      int len_ = 0;                                                                    \
      MPI_Error_string(rc_, msg_, &len_);                                              \
      SKYRING_THROW(TransportError, (ErrorContext{rank, -1, "bootstrap"}), #expr ": ", \
                    std::string(msg_, static_cast<std::size_t>(len_)));                \
    }                                                                                  \
  } while (0)

class MpiOutOfBand final : public OutOfBand {
 public:
  MpiOutOfBand() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      SKYRING_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), -1);
      ownsMpi_ = true;
    }
    SKYRING_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), -1);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  ~MpiOutOfBand() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    MPI_Comm_free(&comm_);
    if (ownsMpi_) MPI_Finalize();
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    const int len = static_cast<int>(mine.size());
    std::vector<int> lens(static_cast<std::size_t>(size_));
    SKYRING_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm_), rank_);
    std::vector<int> offsets(static_cast<std::size_t>(size_), 0);
    int total = 0;
    for (int r = 0; r < size_; ++r) {
      offsets[static_cast<std::size_t>(r)] = total;
      total += lens[static_cast<std::size_t>(r)];
    }
    std::vector<std::byte> all(static_cast<std::size_t>(total) + 1);
    SKYRING_MPI_CHECK(MPI_Allgatherv(mine.data(), len, MPI_BYTE, all.data(), lens.data(),
                                     offsets.data(), MPI_BYTE, comm_),
                      rank_);
    std::vector<std::vector<std::byte>> out(static_cast<std::size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      const auto* p = all.data() + offsets[static_cast<std::size_t>(r)];
      out[static_cast<std::size_t>(r)].assign(p, p + lens[static_cast<std::size_t>(r)]);
    }
    return out;
  }

  void barrier() override { SKYRING_MPI_CHECK(MPI_Barrier(comm_), rank_); }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  bool ownsMpi_ = false;
};

}  // namespace

std::unique_ptr<OutOfBand> makeMpiOutOfBand(const Config&) {
  return std::make_unique<MpiOutOfBand>();
}

}  // namespace skyring::bootstrap
