// Translation of UCX status codes into skyring errors, at the boundary where they appear.
#pragma once

#include <ucs/type/status.h>

#include "skyring/error.h"

// SKYRING_UCX_CHECK(expr, ctx, parts...): evaluates expr (a ucs_status_t) and throws
// TransportError "<parts>: <expr> failed: <UCX status string>" unless it is UCS_OK.
#define SKYRING_UCX_CHECK(expr, ctx, ...)                                            \
  do {                                                                               \
    const ucs_status_t skyringUcxStatus_ = (expr);                                   \
    if (skyringUcxStatus_ != UCS_OK) [[unlikely]] {                                  \
      SKYRING_THROW(::skyring::TransportError, ctx, __VA_ARGS__,                     \
                    ": " #expr " failed: ", ::ucs_status_string(skyringUcxStatus_)); \
    }                                                                                \
  } while (0)
