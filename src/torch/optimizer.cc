// DistributedOptimizer: gradient hooks, synchronize() and step(). Semantics mirror the
// Python frontend's (bindings/python/skyring/torch/optimizer.py, Horovod's).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "skyring/error.h"
#include "skyring/skyring.h"
#include "skyring/torch.h"
#include "torch/tensor_view.h"

namespace skyring::torch {

using detail::checkTensor;
using detail::context;

namespace {

struct Param {
  std::string name;  // prefix + parameter name: the engine's name for its gradient
  at::Tensor param;
  // The parameter's AccumulateGrad node. Autograd keeps only a weak reference to it (in
  // the parameter's autograd meta) and makes a new one once it expires, which would drop
  // our hook: holding it keeps the hook in every later graph.
  std::shared_ptr<::torch::autograd::Node> accumulator;
  std::uintptr_t hookKey = 0;
  int delay = 1;  // backward passes left before the gradient is submitted
  Handle handle;  // valid while the gradient is in flight
};

}  // namespace

struct DistributedOptimizer::State {
  std::mutex mutex;  // guards everything below: hooks run on autograd's threads
  bool alive = true;
  bool synchronized = false;  // synchronize() ran since the last hook fired
  DistributedOptimizerOptions options;
  std::vector<Param> params;

  // Submits p's gradient (zeros when autograd left it undefined). Called under mutex.
  void submit(Param& p) {
    at::Tensor& grad = p.param.mutable_grad();
    if (!grad.defined()) {
      grad = at::zeros_like(p.param, at::MemoryFormat::Contiguous).detach();
    } else if (!grad.is_contiguous()) {
      grad = grad.detach().contiguous();
    }
    checkTensor(grad, "torch.DistributedOptimizer");
    AllreduceSpec spec{options.op};
    spec.compression = options.compression;
    // The engine writes the reduction into .grad in place. Its keep-alive holds the
    // tensor, so a backward pass that reached .grad meanwhile would find it shared and
    // accumulate out of place (AccumulateGrad's rule) instead of writing under the engine.
    p.handle =
        allreduceAsync(p.name, detail::engineTensor(grad), std::move(spec), options.processSet);
  }

  // The post hook of parameter index's gradient accumulator.
  void onAccumulated(std::size_t index) {
    std::lock_guard lock(mutex);
    if (!alive) return;
    Param& p = params[index];
    if (p.handle.valid()) {
      SKYRING_THROW(InvalidArgument, context("torch.DistributedOptimizer"),
                    "the gradient of parameter '", p.name, "' was computed more than ",
                    "backwardPassesPerStep (", options.backwardPassesPerStep,
                    ") times before step(): its allreduce is still in flight. Call step() "
                    "(or synchronize()) after every backward, or raise backwardPassesPerStep "
                    "to accumulate gradients locally");
    }
    synchronized = false;
    if (--p.delay == 0) submit(p);
  }
};

namespace {

// Fires after AccumulateGrad has added the incoming gradient into .grad: Node post hooks
// run once the node's apply() returned (autograd's call_function), and AccumulateGrad's
// apply is the accumulation. That is what has to be sent: after the k-th backward of a
// step, .grad holds the sum of k passes. Tensor::register_hook would not do: it runs
// before accumulation, on the incoming gradient of one pass, while .grad is not yet
// written. This is what Horovod does (grad_fn.next_functions[0][0].register_hook).
class AccumulatedHook final : public ::torch::autograd::FunctionPostHook {
 public:
  AccumulatedHook(std::weak_ptr<DistributedOptimizer::State> state, std::size_t index)
      : state_(std::move(state)), index_(index) {}

  ::torch::autograd::variable_list operator()(
      const ::torch::autograd::variable_list& outputs,
      const ::torch::autograd::variable_list& /*inputs*/) override {
    // Weak: the optimizer may be gone while a graph still holds the accumulator.
    if (auto state = state_.lock()) state->onAccumulated(index_);
    return outputs;
  }

 private:
  std::weak_ptr<DistributedOptimizer::State> state_;
  std::size_t index_;
};

}  // namespace

DistributedOptimizer::DistributedOptimizer(std::shared_ptr<::torch::optim::Optimizer> optimizer,
                                           const ::torch::nn::Module& module,
                                           DistributedOptimizerOptions options)
    : DistributedOptimizer(std::move(optimizer), namedParameters(module), std::move(options)) {}

DistributedOptimizer::DistributedOptimizer(std::shared_ptr<::torch::optim::Optimizer> optimizer,
                                           NamedParameters parameters,
                                           DistributedOptimizerOptions options)
    : optimizer_(std::move(optimizer)),
      options_(std::move(options)),
      state_(std::make_shared<State>()) {
  const ErrorContext ctx = context("torch.DistributedOptimizer");
  SKYRING_CHECK_ARG(optimizer_ != nullptr, ctx, "the optimizer is null");
  SKYRING_CHECK_ARG(options_.backwardPassesPerStep >= 1, ctx,
                    "backwardPassesPerStep must be at least 1, not ",
                    options_.backwardPassesPerStep);
  SKYRING_CHECK_ARG(options_.op == ReduceOp::avg || options_.op == ReduceOp::sum ||
                        options_.op == ReduceOp::min || options_.op == ReduceOp::max,
                    ctx, "op ", reduceOpName(options_.op), " makes no sense for gradients");

  std::map<const void*, std::string> names;
  std::set<std::string> seen;
  for (const auto& [name, tensor] : parameters) {
    SKYRING_CHECK_ARG(seen.insert(name).second, ctx, "parameter name '", name,
                      "' appears twice: names must be unique");
    names.emplace(tensor.unsafeGetTensorImpl(), name);
  }

  State& s = *state_;
  s.options = options_;
  for (const auto& group : optimizer_->param_groups()) {
    for (const at::Tensor& p : group.params()) {
      auto it = names.find(p.unsafeGetTensorImpl());
      SKYRING_CHECK_ARG(it != names.end(), ctx, "the optimizer has a parameter of shape ",
                        p.sizes(),
                        " that the module (or list) does not name: every parameter needs a "
                        "name, the same on every rank");
      if (!p.requires_grad()) continue;
      checkTensor(p, "torch.DistributedOptimizer");
      SKYRING_CHECK_ARG(p.is_leaf(), ctx, "parameter '", it->second,
                        "' is not a leaf tensor (it has a grad_fn): it has no gradient "
                        "accumulator to hook");
      s.params.push_back(Param{
          options_.namePrefix + it->second, p, nullptr, 0, options_.backwardPassesPerStep, {}});
    }
  }
  for (std::size_t i = 0; i < s.params.size(); ++i) {
    Param& p = s.params[i];
    p.accumulator = ::torch::autograd::impl::grad_accumulator(p.param);
    SKYRING_CHECK_ARG(p.accumulator != nullptr, ctx, "parameter '", p.name,
                      "' has no gradient accumulator");
    p.hookKey = p.accumulator->add_post_hook(std::make_unique<AccumulatedHook>(state_, i));
  }
}

DistributedOptimizer::~DistributedOptimizer() {
  std::lock_guard lock(state_->mutex);
  state_->alive = false;
  for (Param& p : state_->params) {
    if (p.accumulator) p.accumulator->del_post_hook(p.hookKey);
    p.accumulator.reset();
  }
  // Gradients still in flight complete in the background: the engine holds their memory.
}

void DistributedOptimizer::synchronize() {
  std::vector<std::pair<std::string, Handle>> handles;
  {
    std::lock_guard lock(state_->mutex);
    // Parameters whose hook did not fire (unused in this forward) or fired fewer than
    // backwardPassesPerStep times are submitted now, so every rank submits every name.
    for (Param& p : state_->params) {
      if (!p.handle.valid()) state_->submit(p);
      handles.emplace_back(p.name, p.handle);
    }
  }
  // The first failure, with the parameter named (the engine names the tensor, which is
  // the parameter's name, but says nothing of gradients).
  std::exception_ptr first;
  for (auto& [name, h] : handles) {
    try {
      h.wait();
    } catch (const Error& e) {
      if (!first) {
        try {
          throwError(e.kind(),
                     "DistributedOptimizer: the gradient of parameter '" + name +
                         "' failed: " + e.detail(),
                     ErrorContext{e.rank(), e.peer(), e.op()});
        } catch (...) {
          first = std::current_exception();
        }
      }
    }
  }
  std::lock_guard lock(state_->mutex);
  for (Param& p : state_->params) {
    p.handle = Handle();
    p.delay = options_.backwardPassesPerStep;
  }
  if (first) std::rethrow_exception(first);
  state_->synchronized = true;
}

void DistributedOptimizer::step() {
  bool synchronized;
  {
    std::lock_guard lock(state_->mutex);
    synchronized = state_->synchronized;
  }
  if (!synchronized) synchronize();
  optimizer_->step();
  std::lock_guard lock(state_->mutex);
  state_->synchronized = false;
}

void DistributedOptimizer::zero_grad() {
  {
    std::lock_guard lock(state_->mutex);
    for (const Param& p : state_->params) {
      SKYRING_CHECK_ARG(
          !p.handle.valid() && p.delay == options_.backwardPassesPerStep,
          context("torch.DistributedOptimizer"),
          "zero_grad() was called after backward but before step() or synchronize() "
          "(parameter '",
          p.name,
          "' has its gradient in flight or partly accumulated): this would race with its "
          "allreduce");
    }
  }
  optimizer_->zero_grad();
}

std::vector<std::string> DistributedOptimizer::gradientNames() const {
  std::lock_guard lock(state_->mutex);
  std::vector<std::string> out;
  for (const Param& p : state_->params)
    out.push_back(p.name);
  return out;
}

void broadcastOptimizerState(DistributedOptimizer& optimizer, int root,
                             const ProcessSet& processSet) {
  broadcastOptimizerState(optimizer.optimizer(), root, processSet);
}

}  // namespace skyring::torch
