// skyring::torch: the libtorch frontend (library skyring::torch, libskyring_torch; CMake
// find_package(skyring COMPONENTS torch)). Collectives on at::Tensor and a
// DistributedOptimizer that allreduces gradients as autograd produces them, on the
// process-wide runtime of skyring/skyring.h, as Horovod's horovod.torch.
//
//   skyring::init();
//   auto model = std::make_shared<Net>();
//   skyring::torch::broadcastParameters(*model, 0);
//   skyring::torch::DistributedOptimizer opt(
//       std::make_shared<torch::optim::SGD>(model->parameters(), 0.01), *model);
//   for (...) {
//     opt.zero_grad();
//     loss(model->forward(x), y).backward();   // gradients leave as they are produced
//     opt.step();                               // waits for the averages, then steps
//   }
//   skyring::shutdown();
//
// Tensors: host (CPU) dense tensors of f32, f64, f16, bf16, i8 (Char), u8 (Byte), i32 (Int)
// and i64 (Long). A CUDA tensor gets InvalidArgument today; GPU memory comes with the GPU
// issue, through these same calls. Non-contiguous tensors: the blocking calls work on a
// contiguous copy and copy the result back; the asynchronous in-place calls refuse them
// (the copy back would need a wait of ours). Names: every rank must give the same name
// for the same call (the engine matches calls by name); an empty name gets one generated
// from a per-kind counter ("skyring.torch.allreduce.N"), which is only right when every
// rank makes its unnamed calls in the same order (as Horovod's unnamed calls).
//
// Threads: the collectives may be called from any thread, as the engine's. One
// DistributedOptimizer is used by one training thread; its hooks run on autograd's
// threads and synchronise with it internally.
//
// Failure: skyring::Error subclasses only. InvalidArgument at once for what can never
// work (dtype, device, layout, before skyring::init()); what the ranks disagree about (a
// name with different shapes or dtypes on different ranks) fails every rank's handle with
// the engine's TransportError, which names the tensor (for DistributedOptimizer: the
// parameter) and the ranks.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "skyring/communicator.h"
#include "skyring/dtype.h"
#include "skyring/engine.h"
#include "skyring/process_set.h"
#include "skyring/reduce_op.h"

namespace skyring::torch {

// ---- dtypes -----------------------------------------------------------------------------

// The skyring dtype of a torch scalar type; InvalidArgument naming the type (e.g.
// "torch dtype Bool has no skyring dtype; supported: ...") for the others.
DType toDType(at::ScalarType type);
// The torch scalar type of a skyring dtype (every DType has one).
at::ScalarType toScalarType(DType dtype);
// True when toDType(type) would not throw.
bool isSupported(at::ScalarType type) noexcept;

// ---- handles ----------------------------------------------------------------------------

// Completion of an asynchronous call that produces a tensor (out-of-place allreduce,
// allgather, out-of-place broadcast). Copyable: copies share one completion and result.
class TensorHandle {
 public:
  TensorHandle() = default;
  TensorHandle(Handle handle, std::shared_ptr<at::Tensor> result)
      : handle_(std::move(handle)), result_(std::move(result)) {}

  // Handle::poll: true once finished. Never blocks.
  bool poll() const { return handle_.poll(); }
  // Waits, rethrows the call's error, and returns the result (the same tensor each time).
  at::Tensor wait() const;
  // The engine's handle (waitFor, error).
  const Handle& handle() const noexcept { return handle_; }
  bool valid() const noexcept { return handle_.valid(); }

 private:
  Handle handle_;
  // Set once the call completed (allgather: by the allocator, on the engine thread).
  std::shared_ptr<at::Tensor> result_;
};

// ---- collectives ------------------------------------------------------------------------
//
// As skyring.h's process-wide calls, on the default runtime's engine or with a process
// set on that set's engine (an empty ProcessSet is the world). Allreduce defaults to the
// average, as Horovod's; spec.compression is the engine's (empty: full precision).

inline AllreduceSpec averageSpec() {
  return AllreduceSpec{ReduceOp::avg};
}

// Out of place: returns a new tensor (same dtype, shape, device) holding the reduction.
at::Tensor allreduce(const at::Tensor& tensor, std::string name = {},
                     AllreduceSpec spec = averageSpec(), const ProcessSet& processSet = {});
// In place: tensor holds the reduction afterwards; returns tensor.
at::Tensor& allreduce_(at::Tensor& tensor, std::string name = {},
                       AllreduceSpec spec = averageSpec(), const ProcessSet& processSet = {});
// Asynchronous out of place: submits a contiguous copy; wait() returns it reduced.
TensorHandle allreduceAsync(const at::Tensor& tensor, std::string name = {},
                            AllreduceSpec spec = averageSpec(), const ProcessSet& processSet = {});
// Asynchronous in place (contiguous tensors only): the caller must not touch tensor until
// the handle completes. The handle keeps the tensor's storage alive.
Handle allreduceAsync_(const at::Tensor& tensor, std::string name = {},
                       AllreduceSpec spec = averageSpec(), const ProcessSet& processSet = {});

// Concatenation of every rank's tensor along the first dimension, in rank order. The
// first dimension may differ between ranks; the other dimensions and the dtype must agree.
// A 0-dimensional tensor is gathered as one row each.
at::Tensor allgather(const at::Tensor& tensor, std::string name = {},
                     const ProcessSet& processSet = {});
TensorHandle allgatherAsync(const at::Tensor& tensor, std::string name = {},
                            const ProcessSet& processSet = {});

// Out of place: a new tensor holding root's tensor (root gets a copy of its own).
at::Tensor broadcast(const at::Tensor& tensor, int root, std::string name = {},
                     const ProcessSet& processSet = {});
// In place: tensor is overwritten with root's; returns tensor.
at::Tensor& broadcast_(at::Tensor& tensor, int root, std::string name = {},
                       const ProcessSet& processSet = {});
TensorHandle broadcastAsync(const at::Tensor& tensor, int root, std::string name = {},
                            const ProcessSet& processSet = {});
// Asynchronous in place (contiguous tensors only), as allreduceAsync_.
Handle broadcastAsync_(const at::Tensor& tensor, int root, std::string name = {},
                       const ProcessSet& processSet = {});

// ---- model and optimizer state ----------------------------------------------------------

// (name, parameter) pairs, as Module::named_parameters() gives them.
using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;
// module.named_parameters(recurse) as NamedParameters, in the module's order.
NamedParameters namedParameters(const ::torch::nn::Module& module);

// Overwrites every parameter and buffer of module with root's (in place, without
// autograd). Collective over the set: every rank's module must have the same names and
// shapes; a parameter whose shape differs fails on every rank with an error naming it
// and the ranks.
void broadcastParameters(::torch::nn::Module& module, int root, const ProcessSet& processSet = {});
// The same for a list of named tensors (parameters, buffers or anything else).
void broadcastParameters(const NamedParameters& parameters, int root,
                         const ProcessSet& processSet = {});

// Makes every rank's optimizer state (per-parameter state such as SGD's momentum buffer,
// Adam's exp_avg, exp_avg_sq and step, and each param group's options such as lr) equal
// to root's: root saves it with Optimizer::save, the bytes are broadcast, and the other
// ranks clear theirs and Optimizer::load it. State root has but a rank lacks (every rank
// before its first step, or one that did not load a checkpoint) is created on that rank
// by the load, for any libtorch optimizer (SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS),
// with no dummy step. Every rank must hold an optimizer of the same type over parameters
// of the same shapes in the same order (InvalidArgument on the ranks where the load
// fails otherwise). Collective over the set.
void broadcastOptimizerState(::torch::optim::Optimizer& optimizer, int root,
                             const ProcessSet& processSet = {});

// ---- DistributedOptimizer ---------------------------------------------------------------

struct DistributedOptimizerOptions {
  // The gradients' codec, as AllreduceSpec::compression: kDefaultCompression ("default")
  // is the job's codec for gradients (SKYRING_COMPRESSION; exact when unset), "none" full
  // precision, anything else a spec (skyring/compression.h: "int8", "topk:0.01", ...).
  std::string compression{kDefaultCompression};
  // Backward passes accumulated locally (in .grad, as autograd does) before the gradients
  // are submitted: on the k-th pass. step() must follow every k-th backward.
  int backwardPassesPerStep = 1;
  // avg (the default) divides the sum by the number of ranks; sum, min, max also work.
  ReduceOp op = ReduceOp::avg;
  // Prepended to every parameter's name in the engine (two optimizers over one module
  // need different prefixes).
  std::string namePrefix{};
  // The ranks that train together (empty: the world).
  ProcessSet processSet{};
};

// Wraps an optimizer: each parameter's gradient is submitted for an allreduce as soon as
// autograd has accumulated it (a post hook on the parameter's gradient accumulator), so
// communication overlaps the rest of backward; step() waits for every gradient, writes
// the reduced values into .grad and steps the inner optimizer.
//
// Every parameter of the inner optimizer must be named (by the module or the list) and
// names must be unique: InvalidArgument otherwise. Parameters that need no gradient are
// skipped. A parameter whose gradient was not computed on this rank (unused in this
// forward) is submitted as zeros at step(), so every rank submits the same names.
//
// Misuse gets InvalidArgument: a backward pass that reaches a parameter whose gradient
// is already in flight (more than backwardPassesPerStep backward passes before step()),
// and zero_grad() while gradients are in flight (after backward, before step() or
// synchronize()). Stepping the inner optimizer directly cannot be detected.
//
// Ownership: holds the inner optimizer (shared) and hooks on the parameters' gradient
// accumulators, which stop acting when this object is destroyed. Not copyable or movable
// (the hooks point at it).
class DistributedOptimizer {
 public:
  struct State;  // the hooks' shared state (src/torch/optimizer.cc)
  DistributedOptimizer(std::shared_ptr<::torch::optim::Optimizer> optimizer,
                       const ::torch::nn::Module& module, DistributedOptimizerOptions options = {});
  DistributedOptimizer(std::shared_ptr<::torch::optim::Optimizer> optimizer,
                       NamedParameters parameters, DistributedOptimizerOptions options = {});
  // Unhooks. Gradients still in flight complete in the background (the engine holds
  // their memory).
  ~DistributedOptimizer();
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // synchronize() (unless it already ran since the last backward), then the inner step.
  void step();
  // Submits the gradients whose hooks did not fire (as zeros where .grad is undefined),
  // waits for every submitted gradient and writes the reduced values into .grad. Call it
  // to read or clip the reduced gradients before step(). Throws the engine's error (e.g. a
  // shape mismatch naming the parameter and ranks).
  void synchronize();
  // The inner optimizer's zero_grad(); InvalidArgument while gradients are in flight.
  void zero_grad();

  ::torch::optim::Optimizer& optimizer() noexcept { return *optimizer_; }
  const ::torch::optim::Optimizer& optimizer() const noexcept { return *optimizer_; }
  const DistributedOptimizerOptions& options() const noexcept { return options_; }
  // The names the gradients travel under (prefix + parameter name), in hook order.
  std::vector<std::string> gradientNames() const;

 private:
  std::shared_ptr<::torch::optim::Optimizer> optimizer_;
  DistributedOptimizerOptions options_;
  std::shared_ptr<State> state_;
};

// broadcastOptimizerState(optimizer.optimizer(), root, set).
void broadcastOptimizerState(DistributedOptimizer& optimizer, int root,
                             const ProcessSet& processSet = {});

}  // namespace skyring::torch
