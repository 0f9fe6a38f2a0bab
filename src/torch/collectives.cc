// The dtype mapping, collectives on at::Tensor over the process-wide engine
// (skyring/skyring.h), and broadcastParameters. One translation unit with optimizer.cc
// for the whole library: each that includes libtorch compiles slowly.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "skyring/error.h"
#include "skyring/skyring.h"
#include "skyring/torch.h"
#include "torch/tensor_view.h"

namespace skyring::torch {

namespace {

// The one table of the mapping: isSupported, toDType and toScalarType all read it.
constexpr std::pair<at::ScalarType, DType> kDTypes[] = {
    {at::kFloat, DType::f32},     {at::kDouble, DType::f64}, {at::kHalf, DType::f16},
    {at::kBFloat16, DType::bf16}, {at::kChar, DType::i8},    {at::kByte, DType::u8},
    {at::kInt, DType::i32},       {at::kLong, DType::i64}};

}  // namespace

bool isSupported(at::ScalarType type) noexcept {
  for (const auto& [scalar, dtype] : kDTypes)
    if (scalar == type) return true;
  return false;
}

DType toDType(at::ScalarType type) {
  for (const auto& [scalar, dtype] : kDTypes)
    if (scalar == type) return dtype;
  SKYRING_THROW(InvalidArgument, ErrorContext{.op = "torch"}, "torch dtype ",
                std::string(c10::toString(type)),
                " has no skyring dtype; supported: Float, Double, Half, BFloat16, Char (int8), "
                "Byte (uint8), Int, Long");
}

at::ScalarType toScalarType(DType dtype) {
  for (const auto& [scalar, d] : kDTypes)
    if (d == dtype) return scalar;
  return at::kFloat;
}

namespace detail {

ErrorContext context(const char* op) {
  return ErrorContext{.rank = isInitialized() ? rank() : -1, .peer = -1, .op = op};
}

void checkTensor(const at::Tensor& tensor, const char* op) {
  SKYRING_CHECK_ARG(tensor.defined(), context(op), "the tensor is undefined");
  // CUDA tensors get their own message: they are the next thing to come, through these
  // same calls, once the engine takes device memory.
  if (tensor.is_cuda()) {
    SKYRING_THROW(InvalidArgument, context(op), "tensor on ", tensor.device().str(),
                  ": skyring::torch takes host (CPU) tensors only for now; GPU memory comes "
                  "with the GPU issue (copy it with .cpu() meanwhile)");
  }
  SKYRING_CHECK_ARG(tensor.device().is_cpu(), context(op), "tensor on ", tensor.device().str(),
                    ": skyring::torch takes host (CPU) tensors only");
  SKYRING_CHECK_ARG(tensor.layout() == at::kStrided, context(op),
                    "only dense (strided) tensors are supported, not ", tensor.layout(),
                    " (call .to_dense())");
  (void)toDType(tensor.scalar_type());  // throws, naming the dtype
}

std::vector<std::int64_t> engineShape(const at::Tensor& tensor) {
  std::vector<std::int64_t> shape(tensor.sizes().begin(), tensor.sizes().end());
  if (shape.empty()) shape.push_back(1);  // a 0-d tensor travels as one element
  return shape;
}

Tensor engineTensor(const at::Tensor& tensor) {
  return Tensor{BufferView{tensor.data_ptr(), static_cast<std::size_t>(tensor.numel()),
                           toDType(tensor.scalar_type()), MemoryKind::host},
                engineShape(tensor), std::make_shared<at::Tensor>(tensor)};
}

std::string nameOr(std::string name, std::string_view kind) {
  if (!name.empty()) return name;
  // One counter per kind, as Horovod's unnamed calls: right only when every rank makes
  // its unnamed calls of a kind in the same order.
  static std::atomic<std::uint64_t> allreduces{0}, allgathers{0}, broadcasts{0};
  std::atomic<std::uint64_t>& counter =
      kind == "allreduce" ? allreduces : (kind == "allgather" ? allgathers : broadcasts);
  return "skyring.torch." + std::string(kind) + "." + std::to_string(counter++);
}

}  // namespace detail

using detail::checkTensor;
using detail::context;
using detail::engineTensor;
using detail::nameOr;

at::Tensor TensorHandle::wait() const {
  SKYRING_CHECK_ARG(handle_.valid(), context("torch.wait"), "wait() on an empty TensorHandle");
  handle_.wait();
  return *result_;
}

namespace {

// A contiguous tensor that the engine may write into and that no autograd graph sees.
at::Tensor contiguousCopy(const at::Tensor& tensor) {
  return tensor.detach().clone(at::MemoryFormat::Contiguous);
}

void checkInPlaceAsync(const at::Tensor& tensor, const char* op) {
  SKYRING_CHECK_ARG(tensor.is_contiguous(), context(op),
                    "the asynchronous in-place calls take contiguous tensors only (the copy "
                    "back would need a wait of ours): call .contiguous() first, or use the "
                    "blocking or out-of-place call");
}

// Runs an in-place call on tensor, through a contiguous copy when it is not contiguous.
template <typename Submit>
void inPlace(at::Tensor& tensor, Submit&& submit) {
  if (tensor.is_contiguous()) {
    submit(tensor.detach()).wait();
    return;
  }
  at::Tensor work = contiguousCopy(tensor);
  submit(work).wait();
  at::NoGradGuard noGrad;
  tensor.detach().copy_(work);
}

}  // namespace

Handle allreduceAsync_(const at::Tensor& tensor, std::string name, AllreduceSpec spec,
                       const ProcessSet& processSet) {
  checkTensor(tensor, "torch.allreduce");
  checkInPlaceAsync(tensor, "torch.allreduce");
  return skyring::allreduceAsync(nameOr(std::move(name), "allreduce"), engineTensor(tensor),
                                 std::move(spec), processSet);
}

TensorHandle allreduceAsync(const at::Tensor& tensor, std::string name, AllreduceSpec spec,
                            const ProcessSet& processSet) {
  checkTensor(tensor, "torch.allreduce");
  auto out = std::make_shared<at::Tensor>(contiguousCopy(tensor));
  Handle h = allreduceAsync_(*out, std::move(name), std::move(spec), processSet);
  return TensorHandle(std::move(h), std::move(out));
}

at::Tensor allreduce(const at::Tensor& tensor, std::string name, AllreduceSpec spec,
                     const ProcessSet& processSet) {
  return allreduceAsync(tensor, std::move(name), std::move(spec), processSet).wait();
}

at::Tensor& allreduce_(at::Tensor& tensor, std::string name, AllreduceSpec spec,
                       const ProcessSet& processSet) {
  checkTensor(tensor, "torch.allreduce");
  inPlace(tensor, [&](const at::Tensor& t) {
    return allreduceAsync_(t, std::move(name), std::move(spec), processSet);
  });
  return tensor;
}

TensorHandle allgatherAsync(const at::Tensor& tensor, std::string name,
                            const ProcessSet& processSet) {
  checkTensor(tensor, "torch.allgather");
  at::Tensor input = tensor.is_contiguous() ? tensor.detach() : contiguousCopy(tensor);
  std::vector<std::int64_t> shape = detail::engineShape(input);
  auto result = std::make_shared<at::Tensor>();
  const at::TensorOptions options = input.options().requires_grad(false);
  // Called once on the engine thread with the total of the first dimensions; the result
  // pointer is read only after the handle completed.
  Engine::Allocator allocate = [result, shape, options](std::int64_t rows) {
    std::vector<std::int64_t> outShape = shape;
    outShape[0] = rows;
    *result = at::empty(outShape, options);
    return engineTensor(*result);
  };
  Handle h = skyring::allgatherAsync(nameOr(std::move(name), "allgather"), engineTensor(input),
                                     std::move(allocate), processSet);
  return TensorHandle(std::move(h), std::move(result));
}

at::Tensor allgather(const at::Tensor& tensor, std::string name, const ProcessSet& processSet) {
  return allgatherAsync(tensor, std::move(name), processSet).wait();
}

Handle broadcastAsync_(const at::Tensor& tensor, int root, std::string name,
                       const ProcessSet& processSet) {
  checkTensor(tensor, "torch.broadcast");
  checkInPlaceAsync(tensor, "torch.broadcast");
  return skyring::broadcastAsync(nameOr(std::move(name), "broadcast"), engineTensor(tensor), root,
                                 processSet);
}

TensorHandle broadcastAsync(const at::Tensor& tensor, int root, std::string name,
                            const ProcessSet& processSet) {
  checkTensor(tensor, "torch.broadcast");
  auto out = std::make_shared<at::Tensor>(contiguousCopy(tensor));
  Handle h = broadcastAsync_(*out, root, std::move(name), processSet);
  return TensorHandle(std::move(h), std::move(out));
}

at::Tensor broadcast(const at::Tensor& tensor, int root, std::string name,
                     const ProcessSet& processSet) {
  return broadcastAsync(tensor, root, std::move(name), processSet).wait();
}

at::Tensor& broadcast_(at::Tensor& tensor, int root, std::string name,
                       const ProcessSet& processSet) {
  checkTensor(tensor, "torch.broadcast");
  inPlace(tensor, [&](const at::Tensor& t) {
    return broadcastAsync_(t, root, std::move(name), processSet);
  });
  return tensor;
}

NamedParameters namedParameters(const ::torch::nn::Module& module) {
  NamedParameters out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    out.emplace_back(item.key(), item.value());
  return out;
}

void broadcastParameters(const NamedParameters& parameters, int root,
                         const ProcessSet& processSet) {
  // Every tensor is submitted before any is waited for, so the engine fuses them; each
  // travels under its own name, so a shape that differs between ranks is reported under
  // the parameter's name.
  struct Pending {
    at::Tensor target, work;
    Handle handle;
  };
  std::vector<Pending> pending;
  pending.reserve(parameters.size());
  for (const auto& [name, tensor] : parameters) {
    checkTensor(tensor, "torch.broadcastParameters");
    at::Tensor work = tensor.is_contiguous() ? tensor.detach() : contiguousCopy(tensor);
    Handle h =
        broadcastAsync_(work, root, "skyring.torch.broadcast_parameters." + name, processSet);
    pending.push_back({tensor, work, std::move(h)});
  }
  std::exception_ptr first;
  for (Pending& p : pending) {
    try {
      p.handle.wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
  at::NoGradGuard noGrad;
  for (Pending& p : pending)
    if (!p.target.is_contiguous()) p.target.detach().copy_(p.work);
}

void broadcastParameters(::torch::nn::Module& module, int root, const ProcessSet& processSet) {
  NamedParameters all = namedParameters(module);
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    all.emplace_back(item.key(), item.value());
  broadcastParameters(all, root, processSet);
}

}  // namespace skyring::torch
