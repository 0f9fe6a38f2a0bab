// broadcastOptimizerState: root's optimizer state, serialized with libtorch's own
// Optimizer::save, broadcast as bytes and loaded with Optimizer::load on the other ranks.
//
// Why serialization rather than a broadcast per state tensor (Horovod's way): libtorch
// keys an optimizer's state by the address of each parameter's TensorImpl, which differs
// between ranks, and keeps it in per-optimizer types (SGDParamState, AdamParamState, ...)
// that a generic walk cannot create. Optimizer::load maps the saved state onto this
// rank's parameters by position in the param groups and creates the entries this rank
// lacks (every rank before its first step), so state that only root has arrives whole,
// for every libtorch optimizer, with no dummy step. The cost is one serialized copy of
// the state on each rank, which for the optimizers' state sizes is small beside a step.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "skyring/error.h"
#include "skyring/skyring.h"
#include "skyring/torch.h"
#include "torch/tensor_view.h"

namespace skyring::torch {

using detail::context;

void broadcastOptimizerState(::torch::optim::Optimizer& optimizer, int root,
                             const ProcessSet& processSet) {
  const ErrorContext ctx = context("torch.broadcastOptimizerState");
  const int me = processSet.valid() ? processSet.rank() : rank();
  at::Tensor bytes;
  if (me == root) {
    std::vector<char> buffer;
    try {
      ::torch::serialize::OutputArchive archive;
      optimizer.save(archive);
      archive.save_to([&](const void* data, std::size_t n) {
        const char* p = static_cast<const char*>(data);
        buffer.insert(buffer.end(), p, p + n);
        return n;
      });
    } catch (const c10::Error& e) {
      SKYRING_THROW(InvalidArgument, ctx,
                    "the optimizer's state cannot be saved: ", e.what_without_backtrace());
    }
    bytes = at::empty({static_cast<std::int64_t>(buffer.size())}, at::kByte);
    std::memcpy(bytes.data_ptr(), buffer.data(), buffer.size());
  }
  at::Tensor size = at::full({1}, me == root ? bytes.numel() : 0, at::kLong);
  broadcast_(size, root, "skyring.torch.optimizer_state.size", processSet);
  if (me != root) bytes = at::empty({size.item<std::int64_t>()}, at::kByte);
  broadcast_(bytes, root, "skyring.torch.optimizer_state.bytes", processSet);
  if (me == root) return;
  try {
    ::torch::serialize::InputArchive archive;
    archive.load_from(static_cast<const char*>(bytes.data_ptr()),
                      static_cast<std::size_t>(bytes.numel()));
    // Entries this rank has that root lacks would otherwise survive the load.
    optimizer.state().clear();
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    SKYRING_THROW(InvalidArgument, ctx, "root ", root,
                  "'s optimizer state does not fit this rank's optimizer (every rank needs "
                  "an optimizer of the same type over parameters of the same shapes, in the "
                  "same order): ",
                  e.what_without_backtrace());
  }
}

}  // namespace skyring::torch
