#include "runtime/join.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <sstream>

#include "skyring/error.h"

namespace skyring::runtime {
namespace {

constexpr std::array<char, 4> kMagic = {'S', 'K', 'J', 'R'};
constexpr std::uint8_t kVersion = 1;
constexpr std::size_t kMaxText = 4096;  // longest setting name or value accepted

void putU16(std::vector<std::byte>& out, std::size_t v) {
  out.push_back(static_cast<std::byte>(v & 0xff));
  out.push_back(static_cast<std::byte>((v >> 8) & 0xff));
}

void putText(std::vector<std::byte>& out, std::string_view s) {
  putU16(out, s.size());
  for (char c : s)
    out.push_back(static_cast<std::byte>(c));
}

class Reader {
 public:
  Reader(std::span<const std::byte> bytes, int rank) : bytes_(bytes), rank_(rank) {}

  std::span<const std::byte> take(std::size_t n, const char* what) {
    SKYRING_CHECK(bytes_.size() - pos_ >= n, TransportError, (ErrorContext{-1, rank_, "join"}),
                  "the join record of rank ", rank_, " is truncated in its ", what, " (",
                  bytes_.size(), " bytes)");
    auto out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  std::size_t u16(const char* what) {
    auto b = take(2, what);
    return std::to_integer<std::size_t>(b[0]) | std::to_integer<std::size_t>(b[1]) << 8;
  }
  std::string text(const char* what) {
    const std::size_t n = u16(what);
    SKYRING_CHECK(n <= kMaxText, TransportError, (ErrorContext{-1, rank_, "join"}),
                  "the join record of rank ", rank_, " has a ", n, "-byte ", what);
    auto b = take(n, what);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  std::span<const std::byte> rest() { return bytes_.subspan(pos_); }

 private:
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
  int rank_;
};

std::string rankList(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) os << (i + 1 == ranks.size() ? " and " : ", ");
    os << ranks[i];
  }
  return os.str();
}

}  // namespace

JoinRecord localJoinRecord(const Config& config, const std::string& hostname) {
  JoinRecord r;
  r.where = topology::localRecord(config, hostname);
  for (const auto& [name, value] : config.jobSettings())
    r.settings.emplace_back(std::string(name), value);
  return r;
}

std::vector<std::byte> serialize(const JoinRecord& record) {
  std::vector<std::byte> out;
  for (char c : kMagic)
    out.push_back(static_cast<std::byte>(c));
  out.push_back(static_cast<std::byte>(kVersion));
  putU16(out, record.settings.size());
  for (const auto& [name, value] : record.settings) {
    putText(out, name.substr(0, kMaxText));
    putText(out, value.substr(0, kMaxText));
  }
  const auto where = topology::serialize(record.where);
  out.insert(out.end(), where.begin(), where.end());
  return out;
}

JoinRecord parseJoinRecord(std::span<const std::byte> bytes, int rank) {
  const ErrorContext ctx{-1, rank, "join"};
  Reader in(bytes, rank);
  const auto magic = in.take(kMagic.size() + 1, "header");
  SKYRING_CHECK(std::memcmp(magic.data(), kMagic.data(), kMagic.size()) == 0, TransportError, ctx,
                "rank ", rank,
                " sent something that is not a skyring join record: another program, or "
                "another job on this port?");
  SKYRING_CHECK(std::to_integer<int>(magic[kMagic.size()]) == kVersion, TransportError, ctx,
                "rank ", rank, " runs another skyring version (join record version ",
                std::to_integer<int>(magic[kMagic.size()]), ", this rank's is ", int{kVersion},
                ")");
  JoinRecord r;
  const std::size_t n = in.u16("settings count");
  for (std::size_t i = 0; i < n; ++i) {
    std::string name = in.text("setting name");
    std::string value = in.text("setting value");
    r.settings.emplace_back(std::move(name), std::move(value));
  }
  try {
    r.where = topology::parse(in.rest());
  } catch (const InvalidArgument& e) {
    SKYRING_THROW(TransportError, ctx, "rank ", rank,
                  " sent a malformed topology record: ", e.detail());
  }
  return r;
}

void checkSettingsAgree(const std::vector<JoinRecord>& records, int myRank) {
  // name -> value -> ranks holding it; a rank that lacks a name (another version) counts
  // as the value "(unset)".
  std::map<std::string, std::map<std::string, std::vector<int>>> seen;
  for (std::size_t r = 0; r < records.size(); ++r) {
    for (const auto& [name, value] : records[r].settings)
      seen[name];
  }
  for (auto& [name, values] : seen) {
    for (std::size_t r = 0; r < records.size(); ++r) {
      std::string value = "(unset)";
      for (const auto& [n, v] : records[r].settings) {
        if (n == name) value = v;
      }
      values[value].push_back(static_cast<int>(r));
    }
  }
  std::ostringstream os;
  int differing = 0;
  for (const auto& [name, values] : seen) {
    if (values.size() < 2) continue;
    os << (differing++ == 0 ? "" : "; ") << name << " differs between ranks:";
    const char* sep = " ";
    for (const auto& [value, ranks] : values) {
      os << sep << "'" << value << "' on " << rankList(ranks);
      sep = ", ";
    }
  }
  if (differing == 0) return;
  os << ". Every rank of a job must use the same value (docs/configuration.md, column \"same on "
        "every rank\"); note that mpirun -x NAME=VALUE applies only to its own app context: give "
        "it to every context, or export it before mpirun";
  SKYRING_THROW(InvalidArgument, (ErrorContext{myRank, -1, "init"}), os.str());
}

}  // namespace skyring::runtime
