// The spec grammar of compression.h and the table from codec to constructor.
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <sstream>

#include "compression/codecs.h"

namespace skyring::compression {
namespace {

constexpr std::string_view kValidNames = "none, fp16, bf16, int8, sign, topk, powersgd";

struct CodecEntry {
  Codec codec;
  std::string_view name;
  std::string_view keys;  // the args it accepts besides ef=, for error messages
  bool defaultErrorFeedback;
  double defaultMomentum;  // momentum=B: see CompressionOptions::momentum
  std::unique_ptr<Compressor> (*make)(const CompressionOptions&);
};

constexpr CodecEntry kCodecs[] = {
    {Codec::none, "none", "ef, momentum=B", false, 0.0, makeNoneCodec},
    {Codec::fp16, "fp16", "ef, momentum=B", false, 0.0, makeFp16Codec},
    {Codec::bf16, "bf16", "ef, momentum=B", false, 0.0, makeBf16Codec},
    {Codec::int8, "int8", "block=N, stochastic, ef, momentum=B", false, 0.0, makeInt8Codec},
    {Codec::sign, "sign", "block=N, ef, momentum=B", true, kSignMomentum, makeSignCodec},
    {Codec::topk, "topk", "FRACTION (or fraction=F), sampled, ef, momentum=B", true, kTopkMomentum,
     makeTopkCodec},
    {Codec::powersgd, "powersgd", "RANK (or rank=R), ef, momentum=B", true, kPowerSgdMomentum,
     makePowerSgdCodec},
};

const CodecEntry& entry(Codec codec) {
  for (const auto& e : kCodecs) {
    if (e.codec == codec) return e;
  }
  SKYRING_THROW(InvalidArgument, {}, "unknown codec id ", static_cast<int>(codec));
}

[[noreturn]] void badSpec(std::string_view spec, const std::string& why) {
  SKYRING_THROW(InvalidArgument, {}, "bad compression spec \"", spec, "\": ", why,
                " (valid codecs: ", kValidNames, "; grammar in docs/compression.md)");
}

std::uint64_t parseUnsigned(std::string_view spec, std::string_view text) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size()) {
    badSpec(spec, "\"" + std::string(text) + "\" is not a non-negative integer");
  }
  return v;
}

double parseFraction(std::string_view spec, std::string_view text) {
  // std::from_chars for double is in GCC 12's libstdc++; strtod would depend on locale.
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || !(v > 0.0 && v <= 1.0)) {
    badSpec(spec, "topk fraction \"" + std::string(text) + "\" is not a number in (0, 1]");
  }
  return v;
}

double parseMomentum(std::string_view spec, std::string_view text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || !(v >= 0.0 && v < 1.0)) {
    badSpec(spec, "momentum \"" + std::string(text) + "\" is not a number in [0, 1)");
  }
  return v;
}

void validate(std::string_view spec, const CompressionOptions& o) {
  if (o.blockSize < 1 || o.blockSize > kMaxBlock) {
    badSpec(spec, "block must be in [1, " + std::to_string(kMaxBlock) + "]");
  }
  if (o.rank < 1 || o.rank > kMaxRank) {
    badSpec(spec, "powersgd rank must be in [1, " + std::to_string(kMaxRank) + "]");
  }
  if (!(o.topkFraction > 0.0 && o.topkFraction <= 1.0)) {
    badSpec(spec, "topk fraction must be in (0, 1]");
  }
}

CompressionOptions withDefaults(CompressionOptions o) {
  const CodecEntry& e = entry(o.codec);
  if (!o.errorFeedback) o.errorFeedback = e.defaultErrorFeedback;
  if (!o.momentum) o.momentum = e.defaultMomentum;
  if (o.blockSize == 0) {
    o.blockSize = o.codec == Codec::sign ? kDefaultSignBlock : kDefaultInt8Block;
  }
  return o;
}

}  // namespace

CompressionOptions parseCompressionSpec(std::string_view spec) {
  const std::size_t colon = spec.find(':');
  const std::string_view name = spec.substr(0, colon);
  const CodecEntry* found = nullptr;
  for (const auto& e : kCodecs) {
    if (e.name == name) found = &e;
  }
  if (found == nullptr) badSpec(spec, "unknown codec \"" + std::string(name) + "\"");
  CompressionOptions o;
  o.codec = found->codec;
  std::string_view rest = colon == std::string_view::npos ? "" : spec.substr(colon + 1);
  if (colon != std::string_view::npos && rest.empty()) badSpec(spec, "empty argument list");
  bool first = true;
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view arg = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
    if (arg.empty() || (comma != std::string_view::npos && rest.empty())) {
      badSpec(spec, "empty argument");
    }
    const std::size_t eq = arg.find('=');
    const std::string_view key = arg.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? "" : arg.substr(eq + 1);
    const bool positional = first && eq == std::string_view::npos &&
                            (o.codec == Codec::topk || o.codec == Codec::powersgd);
    first = false;
    if (eq != std::string_view::npos && value.empty()) badSpec(spec, "empty value");
    if (key == "ef" && !value.empty()) {
      if (value != "0" && value != "1") badSpec(spec, "ef must be 0 or 1");
      o.errorFeedback = value == "1";
    } else if (key == "momentum" && !value.empty()) {
      o.momentum = parseMomentum(spec, value);
    } else if (o.codec == Codec::topk && (positional || key == "fraction")) {
      o.topkFraction = parseFraction(spec, positional ? arg : value);
    } else if (o.codec == Codec::topk && arg == "sampled") {
      o.topkSampled = true;
    } else if (o.codec == Codec::powersgd && (positional || key == "rank")) {
      const std::uint64_t r = parseUnsigned(spec, positional ? arg : value);
      if (r < 1 || r > kMaxRank) {
        badSpec(spec, "powersgd rank must be in [1, " + std::to_string(kMaxRank) + "]");
      }
      o.rank = static_cast<std::uint32_t>(r);
    } else if ((o.codec == Codec::int8 || o.codec == Codec::sign) && key == "block" &&
               !value.empty()) {
      const std::uint64_t b = parseUnsigned(spec, value);
      if (b < 1 || b > kMaxBlock) {
        badSpec(spec, "block must be in [1, " + std::to_string(kMaxBlock) + "]");
      }
      o.blockSize = static_cast<std::uint32_t>(b);
    } else if (o.codec == Codec::int8 && arg == "stochastic") {
      o.stochastic = true;
    } else {
      badSpec(spec, "argument \"" + std::string(arg) + "\" is not valid for " +
                        std::string(found->name) + " (accepted: " + std::string(found->keys) + ")");
    }
  }
  return withDefaults(o);
}

std::string formatSpec(const CompressionOptions& options) {
  const CompressionOptions o = withDefaults(options);
  std::ostringstream os;
  os << codecName(o.codec);
  char sep = ':';
  auto arg = [&](const auto&... parts) {
    os << sep;
    (os << ... << parts);
    sep = ',';
  };
  switch (o.codec) {
    case Codec::int8:
      arg("block=", o.blockSize);
      if (o.stochastic) arg("stochastic");
      break;
    case Codec::sign:
      arg("block=", o.blockSize);
      break;
    case Codec::topk: {
      std::array<char, 32> buf{};
      const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), o.topkFraction);
      arg(std::string_view(buf.data(), static_cast<std::size_t>(r.ptr - buf.data())));
      if (o.topkSampled) arg("sampled");
      break;
    }
    case Codec::powersgd:
      arg(o.rank);
      break;
    default:
      break;
  }
  if (*o.errorFeedback != entry(o.codec).defaultErrorFeedback) {
    arg("ef=", *o.errorFeedback ? 1 : 0);
  }
  if (*o.momentum != entry(o.codec).defaultMomentum) {
    std::array<char, 32> buf{};
    const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), *o.momentum);
    arg("momentum=", std::string_view(buf.data(), static_cast<std::size_t>(r.ptr - buf.data())));
  }
  return os.str();
}

std::unique_ptr<Compressor> makeCompressor(std::string_view spec) {
  return makeCompressor(parseCompressionSpec(spec));
}

std::unique_ptr<Compressor> makeCompressor(const CompressionOptions& options) {
  const CompressionOptions o = withDefaults(options);
  validate(formatSpec(o), o);
  return entry(o.codec).make(o);
}

}  // namespace skyring::compression
