// The coordinator's durable state (internal): what a checkpoint holds and what the
// aggregator restarts from. Plain data; the Aggregator owns one, checkpoint.h writes and
// reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace skyring::coordinator {

struct MemberState {
  std::string name;
  // False once the cluster left or missed a round's close; the close-at-all rule then does
  // not wait for it. Set again by its next submission or join (a rejoin).
  bool active = true;
  // Rounds of this cluster's submissions that are counted (in the current or the previous
  // round's aggregate, so at most two: the idempotency record of (cluster, round)). Older
  // rounds are pruned at each close: a submission for them is late whatever it was.
  std::vector<std::uint64_t> counted;
};

struct CoordinatorState {
  std::uint64_t round = 0;      // the open round; rounds [0, round) are applied
  std::vector<float> weights;   // global weights after round - 1
  std::vector<float> momentum;  // the outer optimizer's (zeros for plain averaging)
  std::vector<MemberState> members;
};

}  // namespace skyring::coordinator
