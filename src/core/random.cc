#include "core/random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

namespace skyring::detail {

void fillRandom(std::span<std::byte> out, const ErrorContext& ctx) {
  std::size_t filled = 0;
  while (filled < out.size()) {
    const ssize_t n = ::getrandom(out.data() + filled, out.size() - filled, 0);
    if (n > 0) {
      filled += static_cast<std::size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      SKYRING_THROW(TransportError, ctx, "getrandom failed: ", std::strerror(errno));
    }
  }
}

}  // namespace skyring::detail
