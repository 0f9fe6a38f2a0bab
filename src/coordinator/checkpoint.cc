// The coordinator's checkpoint file (checkpoint.h).
#include "coordinator/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <vector>

#include "coordinator/crc32c.h"
#include "coordinator/wire.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

static_assert(std::endian::native == std::endian::little, "floats are stored as host floats");

constexpr std::array<char, 4> kMagic = {'S', 'K', 'C', 'K'};
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kMaxMembers = 1u << 16;
constexpr std::size_t kMaxCounted = 16;

const ErrorContext kCtx{-1, -1, "coordinator checkpoint"};

[[noreturn]] void ioError(const std::string& what, const std::string& path) {
  SKYRING_THROW(TransportError, kCtx, what, " '", path, "' failed: ", std::strerror(errno));
}

// Writes to a file descriptor through a buffer, keeping the CRC of everything written.
class Sink {
 public:
  Sink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void bytes(const void* p, std::size_t n) {
    const auto s = std::span(static_cast<const std::byte*>(p), n);
    crc_ = crc32c(s, crc_);
    if (buffer_.size() + n > kBuffer) flush();
    if (n >= kBuffer) {
      write(s);
    } else {
      buffer_.insert(buffer_.end(), s.begin(), s.end());
    }
  }
  template <typename T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
  std::uint32_t crc() const { return crc_; }
  void flush() {
    write(buffer_);
    buffer_.clear();
  }

 private:
  static constexpr std::size_t kBuffer = 1 << 20;
  void write(std::span<const std::byte> s) {
    while (!s.empty()) {
      const ssize_t w = ::write(fd_, s.data(), s.size());
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) ioError("write of", path_);
      s = s.subspan(static_cast<std::size_t>(w));
    }
  }
  int fd_;
  std::string path_;
  std::vector<std::byte> buffer_;
  std::uint32_t crc_ = 0;
};

// Reads a whole file's fields, each checked against what is left, keeping the CRC.
class Source {
 public:
  Source(int fd, std::string path, std::uint64_t size)
      : fd_(fd), path_(std::move(path)), left_(size) {}
  void bytes(void* p, std::size_t n, const char* what) {
    if (n > left_)
      corrupt(detail::concat("truncated: ", what, " needs ", n, " bytes, ", left_, " left"));
    auto* out = static_cast<std::byte*>(p);
    std::size_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(fd_, out + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) ioError("read of", path_);
      if (r == 0) corrupt("truncated while reading");
      got += static_cast<std::size_t>(r);
    }
    crc_ = crc32c(std::span(out, n), crc_);
    left_ -= n;
  }
  template <typename T>
  T value(const char* what) {
    T v;
    bytes(&v, sizeof v, what);
    return v;
  }
  std::uint32_t crc() const { return crc_; }
  std::uint64_t left() const { return left_; }
  [[noreturn]] void corrupt(const std::string& why) const {
    SKYRING_THROW(InvalidArgument, kCtx, "checkpoint '", path_, "' is torn or corrupt (", why,
                  "); restore a good copy or remove it to start from round 0");
  }

 private:
  int fd_;
  std::string path_;
  std::uint64_t left_;
  std::uint32_t crc_ = 0;
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

void saveCheckpoint(const std::string& dir, const CoordinatorState& state) {
  SKYRING_CHECK_ARG(state.momentum.size() == state.weights.size(), kCtx,
                    "momentum and weights differ in size");
  const std::string path = dir + "/" + kCheckpointName;
  const std::string tmp = path + ".tmp";
  {
    Fd file{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
    if (file.fd < 0) ioError("open of", tmp);
    Sink out(file.fd, tmp);
    out.bytes(kMagic.data(), kMagic.size());
    out.value(kVersion);
    out.value(std::uint64_t{state.round});
    out.value(std::uint64_t{state.weights.size()});
    out.value(static_cast<std::uint32_t>(state.members.size()));
    for (const auto& m : state.members) {
      out.value(static_cast<std::uint16_t>(m.name.size()));
      out.bytes(m.name.data(), m.name.size());
      out.value(std::uint8_t{m.active ? std::uint8_t{1} : std::uint8_t{0}});
      out.value(static_cast<std::uint32_t>(m.counted.size()));
      for (std::uint64_t r : m.counted)
        out.value(r);
    }
    out.bytes(state.weights.data(), state.weights.size() * sizeof(float));
    out.bytes(state.momentum.data(), state.momentum.size() * sizeof(float));
    const std::uint32_t crc = out.crc();
    out.value(crc);
    out.flush();
    if (::fsync(file.fd) != 0) ioError("fsync of", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) ioError("rename onto", path);
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) ioError("open of directory", dir);
  if (::fsync(d.fd) != 0) ioError("fsync of directory", dir);
}

std::optional<CoordinatorState> loadCheckpoint(const std::string& dir) {
  const std::string path = dir + "/" + kCheckpointName;
  Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    ioError("open of", path);
  }
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) ioError("stat of", path);
  Source in(file.fd, path, static_cast<std::uint64_t>(st.st_size));

  std::array<char, 4> magic{};
  in.bytes(magic.data(), magic.size(), "magic");
  if (magic != kMagic) in.corrupt("bad magic: not a coordinator checkpoint");
  const auto version = in.value<std::uint32_t>("version");
  if (version != kVersion) {
    in.corrupt(detail::concat("version ", version, ", this build reads ", kVersion));
  }
  CoordinatorState state;
  state.round = in.value<std::uint64_t>("round");
  const auto count = in.value<std::uint64_t>("element count");
  const auto members = in.value<std::uint32_t>("member count");
  if (members > kMaxMembers) in.corrupt(detail::concat(members, " members"));
  for (std::uint32_t i = 0; i < members; ++i) {
    MemberState m;
    const auto length = in.value<std::uint16_t>("name length");
    if (length == 0 || length > wire::kMaxNameBytes) in.corrupt("bad member name length");
    m.name.resize(length);
    in.bytes(m.name.data(), length, "member name");
    const auto active = in.value<std::uint8_t>("active");
    if (active > 1) in.corrupt("bad active flag");
    m.active = active == 1;
    const auto n = in.value<std::uint32_t>("counted rounds");
    if (n > kMaxCounted) in.corrupt(detail::concat(n, " counted rounds"));
    for (std::uint32_t k = 0; k < n; ++k)
      m.counted.push_back(in.value<std::uint64_t>("counted round"));
    state.members.push_back(std::move(m));
  }
  // The rest must be exactly two arrays and the CRC: checked before allocating.
  const std::uint64_t left = in.left();
  if (left < 4 || count > (left - 4) / (2 * sizeof(float)) ||
      left - 4 != 2 * sizeof(float) * count) {
    in.corrupt(detail::concat(in.left(), " bytes left for ", count, " elements"));
  }
  state.weights.resize(count);
  state.momentum.resize(count);
  in.bytes(state.weights.data(), count * sizeof(float), "weights");
  in.bytes(state.momentum.data(), count * sizeof(float), "momentum");
  const std::uint32_t want = in.crc();
  const auto got = in.value<std::uint32_t>("CRC32C");
  if (got != want) {
    in.corrupt(
        detail::concat("CRC32C mismatch: stored 0x", std::hex, got, ", content gives 0x", want));
  }
  return state;
}

}  // namespace skyring::coordinator
