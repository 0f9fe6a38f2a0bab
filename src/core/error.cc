#include "skyring/error.h"

#include <cstring>

namespace skyring {
namespace {

std::string formatMessage(const std::string& detail, const ErrorContext& ctx, const char* file,
                          int line) {
  std::ostringstream os;
  os << "skyring";
  if (ctx.rank >= 0 || ctx.peer >= 0 || !ctx.op.empty()) {
    os << " [";
    const char* sep = "";
    if (ctx.rank >= 0) {
      os << "rank " << ctx.rank;
      sep = ", ";
    }
    if (!ctx.op.empty()) {
      os << sep << ctx.op;
      sep = ", ";
    }
    if (ctx.peer >= 0) os << sep << "peer " << ctx.peer;
    os << "]";
  }
  os << ": " << detail;
  if (file != nullptr) {
    const char* base = std::strrchr(file, '/');
    os << " (" << (base != nullptr ? base + 1 : file) << ":" << line << ")";
  }
  return os.str();
}

}  // namespace

Error::Error(ErrorKind kind, const std::string& detail, ErrorContext ctx, const char* file,
             int line)
    : std::runtime_error(formatMessage(detail, ctx, file, line)),
      kind_(kind),
      ctx_(std::move(ctx)),
      detail_(detail) {}

void throwError(ErrorKind kind, const std::string& detail, ErrorContext ctx) {
  switch (kind) {
    case ErrorKind::invalidArgument:
      throw InvalidArgument(detail, std::move(ctx));
    case ErrorKind::transport:
      throw TransportError(detail, std::move(ctx));
    case ErrorKind::timeout:
      throw Timeout(detail, std::move(ctx));
    case ErrorKind::aborted:
      break;
  }
  throw Aborted(detail, std::move(ctx));
}

}  // namespace skyring
