// The undo log of one in-flight submission (internal): the encoded chunks already added
// to the round's accumulator, kept so that they can be subtracted again exactly if the
// submission never completes (its cluster died, sent a bad chunk, or the round closed
// first). Discarded when the submission completes.
//
// Where: an unnamed file (O_TMPFILE) in a spill directory, so memory stays bounded by the
// accumulator whatever the model's size and the kernel removes it even after kill -9; or,
// with no directory, in memory (tests, small models). Holds the encoded bytes, so an int8
// submission costs about a quarter of its f32 size.
//
// Owned by its submission; one thread. I/O failures throw TransportError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace skyring::coordinator {

class UndoLog {
 public:
  explicit UndoLog(const std::string& spillDir);
  ~UndoLog();
  UndoLog(const UndoLog&) = delete;
  UndoLog& operator=(const UndoLog&) = delete;

  void append(std::uint64_t offset, std::span<const std::byte> blob);
  // Calls f for every appended chunk, in order.
  void replay(const std::function<void(std::uint64_t, std::span<const std::byte>)>& f) const;
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  int fd_ = -1;
  std::vector<std::vector<std::byte>> memory_;  // one record per chunk: no reallocation copies
  std::size_t bytes_ = 0;
};

}  // namespace skyring::coordinator
