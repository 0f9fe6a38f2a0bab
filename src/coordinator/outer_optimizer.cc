// The outer optimizer (outer_optimizer.h).
#include "coordinator/outer_optimizer.h"

#include <cmath>

#include "skyring/error.h"

namespace skyring::coordinator {

void validate(const OuterOptions& options) {
  const ErrorContext ctx{-1, -1, "coordinator options"};
  SKYRING_CHECK_ARG(std::isfinite(options.learningRate) && options.learningRate > 0, ctx,
                    "outer learning rate must be > 0, got ", options.learningRate);
  SKYRING_CHECK_ARG(
      std::isfinite(options.momentum) && options.momentum >= 0 && options.momentum < 1, ctx,
      "outer momentum must be in [0, 1), got ", options.momentum);
}

std::string_view outerKindName(OuterKind kind) noexcept {
  return kind == OuterKind::nesterov ? "nesterov" : "average";
}

void applyOuterStep(const OuterOptions& options, std::span<const double> delta,
                    std::span<float> weights, std::span<float> momentum) noexcept {
  const std::size_t n = delta.size();
  if (options.kind == OuterKind::average) {
    for (std::size_t i = 0; i < n; ++i) {
      weights[i] = static_cast<float>(static_cast<double>(weights[i]) - delta[i]);
    }
    return;
  }
  const double lr = options.learningRate;
  const double mu = options.momentum;
  for (std::size_t i = 0; i < n; ++i) {
    const double m = mu * static_cast<double>(momentum[i]) + delta[i];
    momentum[i] = static_cast<float>(m);
    const double step = delta[i] + mu * static_cast<double>(momentum[i]);
    weights[i] = static_cast<float>(static_cast<double>(weights[i]) - lr * step);
  }
}

}  // namespace skyring::coordinator
