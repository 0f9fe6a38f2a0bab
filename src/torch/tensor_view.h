// What the skyring::torch sources share: checking an at::Tensor and viewing it as the
// engine's Tensor. Internal (src/torch only).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "skyring/engine.h"
#include "skyring/error.h"

namespace skyring::torch::detail {

// An error context with this rank (when initialised) and op.
ErrorContext context(const char* op);
// InvalidArgument unless tensor is a defined, dense host tensor of a supported dtype
// (CUDA tensors are told that GPU memory comes with the GPU issue).
void checkTensor(const at::Tensor& tensor, const char* op);
// The tensor's shape as the engine takes it (a 0-d tensor as one element).
std::vector<std::int64_t> engineShape(const at::Tensor& tensor);
// A view of a contiguous checked tensor whose keep-alive holds the tensor (its storage).
Tensor engineTensor(const at::Tensor& tensor);
// name, or a generated "skyring.torch.<kind>.<n>" when empty.
std::string nameOr(std::string name, std::string_view kind);

}  // namespace skyring::torch::detail
