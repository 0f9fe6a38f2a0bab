// The coordinator's aggregator (aggregator.h).
#include "coordinator/aggregator.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

const ErrorContext kOptionsCtx{-1, -1, "coordinator options"};
constexpr std::size_t kCloseBlock = 65536;  // elements averaged at a time at a close

ErrorContext submitCtx() {
  return ErrorContext{-1, -1, "coordinator submit"};
}

compression::Codec toCodec(wire::SubmitCodec c) {
  switch (c) {
    case wire::SubmitCodec::none:
      return compression::Codec::none;
    case wire::SubmitCodec::fp16:
      return compression::Codec::fp16;
    case wire::SubmitCodec::bf16:
      return compression::Codec::bf16;
    case wire::SubmitCodec::int8:
      return compression::Codec::int8;
  }
  return compression::Codec::none;
}

}  // namespace

struct Aggregator::Submission {
  Submission(std::uint64_t r, Admission a, const wire::SubmitBegin& b, const std::string& dir)
      : round(r), admission(a), codec(b.codec), samples(b.samples), log(dir) {}
  std::uint64_t round;  // the submission's own round (k, or k - 1 when carried)
  Admission admission;  // accepted or carried
  wire::SubmitCodec codec;
  std::uint64_t samples;
  std::uint64_t received = 0;  // elements added so far
  bool stale = false;          // its round closed first: undone, chunks ignored
  UndoLog log;
};

Aggregator::Aggregator(AggregatorOptions options, CoordinatorState state, Clock::time_point now)
    : options_(std::move(options)), state_(std::move(state)), opened_(now) {
  const auto& names = options_.clusters;
  SKYRING_CHECK_ARG(!names.empty(), kOptionsCtx, "no clusters named");
  SKYRING_CHECK_ARG(names.size() <= fixed::kMaxContributionsPerElement / 2, kOptionsCtx,
                    names.size(), " clusters exceed the limit of ",
                    fixed::kMaxContributionsPerElement / 2);
  SKYRING_CHECK_ARG(std::set<std::string>(names.begin(), names.end()).size() == names.size(),
                    kOptionsCtx, "cluster names must be unique");
  for (const auto& n : names) {
    SKYRING_CHECK_ARG(!n.empty() && n.size() <= wire::kMaxNameBytes, kOptionsCtx, "cluster name '",
                      n, "' must have 1 to ", wire::kMaxNameBytes, " bytes");
  }
  SKYRING_CHECK_ARG(options_.quorum >= 1 && options_.quorum <= names.size(), kOptionsCtx, "quorum ",
                    options_.quorum, " must be in [1, ", names.size(), "]");
  SKYRING_CHECK_ARG(options_.deadline.count() >= 0, kOptionsCtx, "negative deadline");
  validate(options_.outer);
  SKYRING_CHECK_ARG(!state_.weights.empty(), kOptionsCtx, "the model has no elements");
  if (state_.momentum.empty()) state_.momentum.assign(state_.weights.size(), 0.0f);
  SKYRING_CHECK_ARG(state_.momentum.size() == state_.weights.size(), kOptionsCtx, "momentum of ",
                    state_.momentum.size(), " elements for weights of ", state_.weights.size());
  if (state_.members.empty()) {
    for (const auto& n : names)
      state_.members.push_back(MemberState{n, true, {}});
  }
  SKYRING_CHECK_ARG(state_.members.size() == names.size(), kOptionsCtx, "the state has ",
                    state_.members.size(), " members, the options name ", names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    SKYRING_CHECK_ARG(state_.members[i].name == names[i], kOptionsCtx, "member ", i, " is '",
                      state_.members[i].name, "' in the state, '", names[i], "' in the options");
  }
  sum_.assign(state_.weights.size(), 0);
  inFlight_.resize(names.size());
  delta_.resize(std::min(kCloseBlock, state_.weights.size()));
  for (auto c : {wire::SubmitCodec::none, wire::SubmitCodec::fp16, wire::SubmitCodec::bf16,
                 wire::SubmitCodec::int8}) {
    compression::CompressionOptions o;
    o.codec = toCodec(c);
    codecs_[static_cast<int>(c)] = compression::makeCompressor(o);
  }
}

Aggregator::~Aggregator() = default;

MemberState& Aggregator::member(const std::string& cluster) {
  return const_cast<MemberState&>(std::as_const(*this).member(cluster));
}

const MemberState& Aggregator::member(const std::string& cluster) const {
  for (const auto& m : state_.members) {
    if (m.name == cluster) return m;
  }
  SKYRING_THROW(TransportError, submitCtx(), "unknown cluster '", cluster,
                "' (not in the coordinator's membership)");
}

bool Aggregator::isCounted(const MemberState& m, std::uint64_t round) const {
  return std::find(m.counted.begin(), m.counted.end(), round) != m.counted.end();
}

std::uint32_t Aggregator::activeMembers() const {
  return static_cast<std::uint32_t>(std::count_if(state_.members.begin(), state_.members.end(),
                                                  [](auto& m) { return m.active; }));
}

Admission Aggregator::begin(const std::string& cluster, const wire::SubmitBegin& b,
                            Clock::time_point now) {
  MemberState& m = member(cluster);
  const auto index = static_cast<std::size_t>(&m - state_.members.data());
  poll(now);  // a deadline passed with quorum closes the round before anything else
  const std::uint64_t k = state_.round;
  m.active = true;  // whatever it sends, it is alive: a rejoin
  if (b.round > k) {
    SKYRING_THROW(TransportError, submitCtx(), "cluster '", cluster, "' submits for round ",
                  b.round, " but round ", k, " is open");
  }
  if (isCounted(m, b.round)) {
    ++stats_.submissionsDuplicate;
    return Admission::duplicate;
  }
  Admission admission = Admission::accepted;
  if (b.round < k) {
    if (options_.late == LatePolicy::carry && b.round + 1 == k) {
      admission = Admission::carried;
    } else {
      ++stats_.submissionsLate;
      return Admission::lateDropped;
    }
  }
  SKYRING_CHECK(b.count == state_.weights.size(), TransportError, submitCtx(), "cluster '", cluster,
                "' submits ", b.count, " elements; the model has ", state_.weights.size());
  SKYRING_CHECK(b.samples > 0 && b.samples <= UINT64_MAX / fixed::kMaxContributionsPerElement,
                TransportError, submitCtx(), "cluster '", cluster, "' reports ", b.samples,
                " samples");
  if (inFlight_[index]) abort(cluster);  // a reconnect restarts its submission
  inFlight_[index] = std::make_unique<Submission>(b.round, admission, b, options_.spillDir);
  return admission;
}

void Aggregator::addChunk(const Submission& s, std::uint64_t offset,
                          std::span<const std::byte> blob, bool subtract) {
  const compression::WireHeader h = compression::readHeader(blob);
  if (h.codec != toCodec(s.codec)) {
    SKYRING_THROW(TransportError, submitCtx(), "chunk encoded with ",
                  compression::codecName(h.codec), " in a submission declared ",
                  compression::codecName(toCodec(s.codec)));
  }
  if (h.count == 0 || offset > sum_.size() || h.count > sum_.size() - offset) {
    SKYRING_THROW(TransportError, submitCtx(), "chunk of elements [", offset, ", ", offset, " + ",
                  h.count, ") outside the model's ", sum_.size());
  }
  scratch_.resize(h.count);
  codecs_[static_cast<int>(s.codec)]->decode(blob, scratch_);
  const double w = static_cast<double>(s.samples);
  // Checked before any element is added, so a refused chunk leaves the sum untouched. One
  // branch-free pass (it vectorizes); the element is looked for only when one is bad.
  const double limit = fixed::kMaxContribution / w;
  bool bad = false;
  for (const float g : scratch_)
    bad |= !(std::fabs(static_cast<double>(g)) <= limit);
  if (bad) {
    const auto it = std::find_if(scratch_.begin(), scratch_.end(), [&](float g) {
      return !(std::fabs(static_cast<double>(g)) <= limit);
    });
    SKYRING_THROW(TransportError, submitCtx(), "element ", offset + (it - scratch_.begin()), " is ",
                  *it, " (times ", s.samples, " samples): not finite or beyond 2^52");
  }
  fixed::Fixed* sum = sum_.data() + offset;
  if (subtract) {
    for (std::size_t i = 0; i < scratch_.size(); ++i) {
      sum[i] -= fixed::fromDouble(w * static_cast<double>(scratch_[i]));
    }
  } else {
    for (std::size_t i = 0; i < scratch_.size(); ++i) {
      sum[i] += fixed::fromDouble(w * static_cast<double>(scratch_[i]));
    }
  }
}

void Aggregator::chunk(const std::string& cluster, std::uint64_t offset,
                       std::span<const std::byte> blob) {
  MemberState& m = member(cluster);
  auto& s = inFlight_[static_cast<std::size_t>(&m - state_.members.data())];
  if (!s) {
    SKYRING_THROW(TransportError, submitCtx(), "cluster '", cluster,
                  "' sends a chunk with no submission begun");
  }
  stats_.bytesIn += blob.size();
  if (s->stale) return;
  try {
    if (offset != s->received) {
      SKYRING_THROW(TransportError, submitCtx(), "chunk at element ", offset, ", expected ",
                    s->received, " (chunks go in order)");
    }
    // Added, then logged: addChunk checks everything before it adds, and a log that fails
    // to take the chunk has it subtracted again, so either way the sum holds exactly the
    // logged chunks.
    addChunk(*s, offset, blob, false);
    try {
      s->log.append(offset, blob);
    } catch (...) {
      addChunk(*s, offset, blob, true);
      throw;
    }
    s->received += scratch_.size();
  } catch (const Error& e) {
    // Peer input: the compression layer's InvalidArgument of a corrupt blob included.
    abort(cluster);
    SKYRING_THROW(TransportError, submitCtx(), "cluster '", cluster, "': ", e.detail());
  }
}

Admission Aggregator::end(const std::string& cluster, std::uint64_t round, Clock::time_point now) {
  MemberState& m = member(cluster);
  auto& s = inFlight_[static_cast<std::size_t>(&m - state_.members.data())];
  maybeClose(now);
  if (!s || s->round != round) {
    SKYRING_THROW(TransportError, submitCtx(), "cluster '", cluster,
                  "' ends a submission of round ", round, " that it has not begun");
  }
  if (s->stale) {
    s.reset();
    ++stats_.submissionsLate;
    return Admission::lateDropped;
  }
  if (s->received != sum_.size()) {
    const std::uint64_t got = s->received;
    abort(cluster);
    SKYRING_THROW(TransportError, submitCtx(), "cluster '", cluster, "' ends its submission after ",
                  got, " of ", sum_.size(), " elements");
  }
  const Admission admission = s->admission;
  samples_ += s->samples;
  m.counted.push_back(s->round);
  ++stats_.submissionsCounted;
  if (admission == Admission::carried) {
    ++stats_.submissionsCarried;
  } else {
    ++onTime_;
  }
  s.reset();
  maybeClose(now);
  return admission;
}

void Aggregator::undo(Submission& s) {
  s.log.replay([&](std::uint64_t offset, std::span<const std::byte> blob) {
    addChunk(s, offset, blob, true);
  });
}

void Aggregator::abort(const std::string& cluster) {
  MemberState& m = member(cluster);
  auto& s = inFlight_[static_cast<std::size_t>(&m - state_.members.data())];
  if (!s) return;
  if (!s->stale) {
    undo(*s);
    ++stats_.submissionsAborted;
  }
  s.reset();
}

bool Aggregator::poll(Clock::time_point now) {
  return maybeClose(now);
}

bool Aggregator::maybeClose(Clock::time_point now) {
  // Every active member counted on time (not merely as many submissions as active members:
  // one that submitted and then left must not stand in for one still training).
  const std::uint64_t k = state_.round;
  const bool all =
      activeMembers() > 0 && std::all_of(state_.members.begin(), state_.members.end(),
                                         [&](auto& m) { return !m.active || isCounted(m, k); });
  const bool late = now >= deadline();
  if (late && onTime_ < options_.quorum && !missCounted_) {
    ++stats_.quorumMisses;
    missCounted_ = true;
  }
  if (!all && !(late && onTime_ >= options_.quorum)) return false;
  close(now);
  return true;
}

void Aggregator::close(Clock::time_point now) {
  // In-flight submissions missed the round: subtract what they added, then the sum holds
  // exactly the counted ones.
  for (auto& s : inFlight_) {
    if (s && !s->stale) {
      undo(*s);
      s->stale = true;
      ++stats_.submissionsAborted;
    }
  }
  const double total = static_cast<double>(samples_);
  for (std::size_t begin = 0; begin < sum_.size(); begin += delta_.size()) {
    const std::size_t n = std::min(delta_.size(), sum_.size() - begin);
    for (std::size_t i = 0; i < n; ++i)
      delta_[i] = fixed::toDouble(sum_[begin + i]) / total;
    applyOuterStep(options_.outer, std::span(delta_).first(n),
                   std::span(state_.weights).subspan(begin, n),
                   std::span(state_.momentum).subspan(begin, n));
  }
  const std::uint64_t closed = state_.round;
  state_.round = closed + 1;
  for (auto& m : state_.members) {
    // Keep the record of the closed round only (a late one may still be carried from it).
    std::erase_if(m.counted, [&](std::uint64_t r) { return r < closed; });
    if (!isCounted(m, closed)) m.active = false;
  }
  std::fill(sum_.begin(), sum_.end(), fixed::Fixed{0});
  samples_ = 0;
  onTime_ = 0;
  missCounted_ = false;
  opened_ = now;
  ++stats_.roundsClosed;
}

void Aggregator::leave(const std::string& cluster) {
  abort(cluster);
  member(cluster).active = false;
}

void Aggregator::join(const std::string& cluster) {
  member(cluster).active = true;
}

wire::RoundStatus Aggregator::status(const std::string& cluster, std::uint64_t round) const {
  const MemberState& m = member(cluster);
  wire::RoundStatus rs;
  rs.round = round;
  rs.current = state_.round;
  rs.state = round < state_.round    ? wire::RoundState::closed
             : round == state_.round ? wire::RoundState::open
                                     : wire::RoundState::future;
  rs.counted = isCounted(m, round);
  rs.submitted = submitted();
  rs.quorum = options_.quorum;
  rs.members = activeMembers();
  return rs;
}

}  // namespace skyring::coordinator
