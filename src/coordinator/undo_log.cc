// The undo log of an in-flight submission (undo_log.h).
#include "coordinator/undo_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

const ErrorContext kCtx{-1, -1, "coordinator undo log"};
constexpr std::size_t kRecordHeader = 12;  // u64 offset, u32 length

void writeAll(int fd, const std::byte* p, std::size_t n, off_t at) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) SKYRING_THROW(TransportError, kCtx, "write failed: ", std::strerror(errno));
    p += w;
    n -= static_cast<std::size_t>(w);
    at += w;
  }
}

void readAll(int fd, std::byte* p, std::size_t n, off_t at) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, at);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) SKYRING_THROW(TransportError, kCtx, "read failed: ", std::strerror(errno));
    p += r;
    n -= static_cast<std::size_t>(r);
    at += r;
  }
}

}  // namespace

UndoLog::UndoLog(const std::string& spillDir) {
  if (spillDir.empty()) return;
  fd_ = ::open(spillDir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    SKYRING_THROW(TransportError, kCtx, "cannot make an unnamed file in spill directory '",
                  spillDir, "': ", std::strerror(errno));
  }
}

UndoLog::~UndoLog() {
  if (fd_ >= 0) ::close(fd_);
}

void UndoLog::append(std::uint64_t offset, std::span<const std::byte> blob) {
  std::byte header[kRecordHeader];
  const auto length = static_cast<std::uint32_t>(blob.size());
  std::memcpy(header, &offset, 8);
  std::memcpy(header + 8, &length, 4);
  if (fd_ < 0) {
    std::vector<std::byte>& record = memory_.emplace_back(kRecordHeader + blob.size());
    std::memcpy(record.data(), header, kRecordHeader);
    if (!blob.empty()) std::memcpy(record.data() + kRecordHeader, blob.data(), blob.size());
  } else {
    writeAll(fd_, header, kRecordHeader, static_cast<off_t>(bytes_));
    writeAll(fd_, blob.data(), blob.size(), static_cast<off_t>(bytes_ + kRecordHeader));
  }
  bytes_ += kRecordHeader + blob.size();
}

void UndoLog::replay(
    const std::function<void(std::uint64_t, std::span<const std::byte>)>& f) const {
  std::uint64_t offset;
  std::uint32_t length;
  if (fd_ < 0) {
    for (const auto& record : memory_) {
      std::memcpy(&offset, record.data(), 8);
      std::memcpy(&length, record.data() + 8, 4);
      f(offset, std::span(record).subspan(kRecordHeader, length));
    }
    return;
  }
  std::vector<std::byte> buffer;
  std::size_t at = 0;
  while (at < bytes_) {
    std::byte header[kRecordHeader];
    readAll(fd_, header, kRecordHeader, static_cast<off_t>(at));
    std::memcpy(&offset, header, 8);
    std::memcpy(&length, header + 8, 4);
    at += kRecordHeader;
    buffer.resize(length);
    readAll(fd_, buffer.data(), length, static_cast<off_t>(at));
    f(offset, buffer);
    at += length;
  }
}

}  // namespace skyring::coordinator
