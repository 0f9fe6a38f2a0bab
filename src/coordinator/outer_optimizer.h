// The outer optimizer (internal): applies a round's averaged pseudo-gradient to the global
// weights. Clusters submit delta = weights at the round's start - their weights after H
// inner steps (DiLoCo's pseudo-gradient), so a step against delta moves toward them.
//
//   nesterov: m = mu * m + delta;  w = w - lr * (delta + mu * m)   (PyTorch's SGD with
//             nesterov=True; DiLoCo uses lr 0.7, mu 0.9)
//   average:  w = w - delta  (the weighted average of the clusters' weights; m unused)
//
// Arithmetic in double, rounded to float once per stored value, no FMA contraction (the
// file is built with -ffp-contract=off), so the same inputs give the same bits on every
// host. Pure; any thread.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace skyring::coordinator {

enum class OuterKind : std::uint8_t { nesterov = 0, average = 1 };

struct OuterOptions {
  OuterKind kind = OuterKind::nesterov;
  double learningRate = 0.7;
  double momentum = 0.9;
};

// Throws InvalidArgument for a learning rate <= 0 or a momentum outside [0, 1).
void validate(const OuterOptions& options);
std::string_view outerKindName(OuterKind kind) noexcept;

// Applies delta[i] (the round's average, in double) to weights[i] and momentum[i].
void applyOuterStep(const OuterOptions& options, std::span<const double> delta,
                    std::span<float> weights, std::span<float> momentum) noexcept;

}  // namespace skyring::coordinator
