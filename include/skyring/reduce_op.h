// Reduction operators of the collectives.
#pragma once

#include <cstdint>
#include <string_view>

namespace skyring {

// avg is sum followed by one division by the number of contributors, done once per
// element by the rank that owns it, so every rank ends with the same bytes. Integer avg
// truncates toward zero. Integer sum and prod wrap around (two's complement).
enum class ReduceOp : std::uint8_t { sum, avg, min, max, prod };

inline constexpr ReduceOp kAllReduceOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::min,
                                             ReduceOp::max, ReduceOp::prod};

std::string_view reduceOpName(ReduceOp op) noexcept;
// Parses a name from reduceOpName(); throws InvalidArgument on anything else.
ReduceOp parseReduceOp(std::string_view name);

}  // namespace skyring
