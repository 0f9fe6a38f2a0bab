// RankRecord validation, the local record and its wire form.
#include "skyring/rank_record.h"

#include <array>
#include <cstdint>
#include <cstring>

#include "skyring/error.h"

namespace skyring::topology {
namespace {

constexpr std::array<char, 4> kMagic = {'S', 'K', 'R', 'R'};
constexpr std::uint8_t kVersion = 1;

// `variable`: where the value comes from, named when a required value is empty (null: the
// value may be empty).
void checkField(const std::string& value, const char* what, const char* variable, int rank) {
  const ErrorContext ctx{rank, -1, "topology record"};
  SKYRING_CHECK_ARG(variable == nullptr || !value.empty(), ctx, "the ", what,
                    " name is empty: set ", variable);
  SKYRING_CHECK_ARG(value.size() <= kMaxRecordField, ctx, "the ", what, " name has ", value.size(),
                    " bytes, more than ", kMaxRecordField);
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    // Names end up in log lines and error messages: no control characters.
    SKYRING_CHECK_ARG(u >= 0x20 && u != 0x7f, ctx, "the ", what,
                      " name holds a control character (byte ", static_cast<int>(u), ")");
  }
}

void putField(std::vector<std::byte>& out, const std::string& s) {
  out.push_back(static_cast<std::byte>(s.size() & 0xff));
  out.push_back(static_cast<std::byte>(s.size() >> 8));
  for (char c : s)
    out.push_back(static_cast<std::byte>(c));
}

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}

  std::span<const std::byte> take(std::size_t n, const char* what) {
    SKYRING_CHECK_ARG(bytes_.size() - pos_ >= n, (ErrorContext{-1, -1, "topology record"}),
                      "record truncated in its ", what, " (", bytes_.size(), " bytes)");
    auto out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }

  std::string field(const char* what) {
    auto len = take(2, what);
    const std::size_t n =
        std::to_integer<std::size_t>(len[0]) | (std::to_integer<std::size_t>(len[1]) << 8);
    SKYRING_CHECK_ARG(n <= kMaxRecordField, (ErrorContext{-1, -1, "topology record"}), "the ", what,
                      " field claims ", n, " bytes, more than ", kMaxRecordField);
    auto body = take(n, what);
    return std::string(reinterpret_cast<const char*>(body.data()), body.size());
  }

  bool atEnd() const { return pos_ == bytes_.size(); }

 private:
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
};

}  // namespace

void validate(const RankRecord& record, int rank) {
  checkField(record.node, "node", "SKYRING_NODE (or give the host a name)", rank);
  checkField(record.cloud, "cloud", "SKYRING_CLOUD", rank);
  checkField(record.region, "region", nullptr, rank);
}

RankRecord localRecord(const Config& config, std::string hostname) {
  RankRecord r{config.node.empty() ? std::move(hostname) : config.node, config.cloud,
               config.region};
  validate(r);
  return r;
}

std::vector<std::byte> serialize(const RankRecord& record) {
  validate(record);
  std::vector<std::byte> out;
  out.reserve(kMagic.size() + 1 + 6 + record.node.size() + record.cloud.size() +
              record.region.size());
  for (char c : kMagic)
    out.push_back(static_cast<std::byte>(c));
  out.push_back(static_cast<std::byte>(kVersion));
  putField(out, record.node);
  putField(out, record.cloud);
  putField(out, record.region);
  return out;
}

RankRecord parse(std::span<const std::byte> bytes) {
  const ErrorContext ctx{-1, -1, "topology record"};
  Reader in(bytes);
  auto magic = in.take(kMagic.size(), "header");
  SKYRING_CHECK_ARG(std::memcmp(magic.data(), kMagic.data(), kMagic.size()) == 0, ctx,
                    "not a topology record (bad magic): ranks run different programs or "
                    "skyring versions");
  const auto version = std::to_integer<int>(in.take(1, "header")[0]);
  SKYRING_CHECK_ARG(version == kVersion, ctx, "topology record version ", version,
                    ", this build reads version ", static_cast<int>(kVersion),
                    ": every rank must run the same skyring version");
  RankRecord r;
  r.node = in.field("node");
  r.cloud = in.field("cloud");
  r.region = in.field("region");
  SKYRING_CHECK_ARG(in.atEnd(), ctx, "trailing bytes after the topology record (", bytes.size(),
                    " bytes in all)");
  validate(r);
  return r;
}

}  // namespace skyring::topology
