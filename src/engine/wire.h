// The engine's wire helpers: values appended to a byte vector, and a reader that refuses
// to run past the end (the bytes come from other ranks, so a short or garbled message is
// a TransportError naming the sender, never a crash).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "skyring/error.h"

namespace skyring::engine {

template <typename T>
void putWire(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

inline void putWire(std::vector<std::byte>& out, const std::string& text) {
  putWire(out, static_cast<std::uint32_t>(text.size()));
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  out.insert(out.end(), p, p + text.size());
}

class WireReader {
 public:
  // from: the rank that sent bytes; rank: this one (for the error's context).
  WireReader(std::span<const std::byte> bytes, int from, int rank)
      : bytes_(bytes), from_(from), rank_(rank) {}
  bool done() const noexcept { return pos_ == bytes_.size(); }
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  std::string text(std::size_t n) {
    const std::byte* p = take(n);
    return {reinterpret_cast<const char*>(p), n};
  }
  // A string written by putWire(out, std::string).
  std::string text() { return text(get<std::uint32_t>()); }

 private:
  const std::byte* take(std::size_t n) {
    if (n > bytes_.size() - pos_) {
      SKYRING_THROW(TransportError, (ErrorContext{rank_, from_, "engine negotiation"}),
                    "malformed engine message from rank ", from_, " (", bytes_.size(), " bytes)");
    }
    const std::byte* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
  int from_;
  int rank_;
};

}  // namespace skyring::engine
