// Anchors the shared library; everything else comes from the layer archives.
#include "skyring/version.h"

namespace skyring {

const char* versionString() noexcept {
  return SKYRING_VERSION;
}

}  // namespace skyring
