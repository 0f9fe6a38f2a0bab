// Reporting a collective's phases to CollectiveOptions::observer (skyring/collective_observer.h):
// a PhaseRecorder says where the phases of one exchange run (observer, level, thread), a
// PhaseSpan times one phase on the stack and reports it when it goes out of scope.
//
// Threads: a recorder is a value read by the thread that runs its exchange; the observer
// serialises what reaches it. Failure: never throws. Cost without an observer: a null check
// at construction and one at destruction, no clock read.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "skyring/collective_observer.h"
#include "skyring/compression.h"

namespace skyring::collectives {

struct PhaseRecorder {
  CollectiveObserver* observer = nullptr;  // null: nothing is recorded
  std::string_view level;                  // a literal: "node", "cloud", "cross-cloud", "world"
  int thread = 0;                          // CollectivePhase::thread
};

class PhaseSpan {
 public:
  // name: a literal (CollectivePhase::name); bytes: the data the phase handles.
  PhaseSpan(const PhaseRecorder& recorder, std::string_view name, std::size_t bytes) noexcept
      : recorder_(recorder), name_(name), bytes_(bytes) {
    if (recorder_.observer != nullptr) begin_ = std::chrono::steady_clock::now();
  }
  // An encode or decode by codec; its bytes and encoded bytes come from add().
  PhaseSpan(const PhaseRecorder& recorder, std::string_view name,
            const compression::Compressor& codec) noexcept
      : PhaseSpan(recorder, name, 0) {
    codec_ = &codec;
  }
  PhaseSpan(const PhaseSpan&) = delete;
  PhaseSpan& operator=(const PhaseSpan&) = delete;

  bool recording() const noexcept { return recorder_.observer != nullptr; }
  void add(std::size_t bytes, std::size_t encoded) noexcept {
    bytes_ += bytes;
    encoded_ += encoded;
  }

  ~PhaseSpan() {
    if (recorder_.observer == nullptr) return;
    CollectivePhase p;
    p.name = name_;
    p.level = recorder_.level;
    std::string spec;
    if (codec_ != nullptr) {
      try {
        spec = codec_->spec();
      } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory; the span goes without it
      }
    }
    p.codec = spec;
    p.bytes = bytes_;
    p.encoded = encoded_;
    p.thread = recorder_.thread;
    p.begin = begin_;
    p.end = std::chrono::steady_clock::now();
    recorder_.observer->phase(p);
  }

 private:
  PhaseRecorder recorder_;  // a copy, so a temporary will do
  std::string_view name_;
  std::size_t bytes_;
  std::size_t encoded_ = 0;
  const compression::Compressor* codec_ = nullptr;
  std::chrono::steady_clock::time_point begin_;
};

}  // namespace skyring::collectives
