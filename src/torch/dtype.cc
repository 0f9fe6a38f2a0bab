// at::ScalarType <-> skyring::DType.
#include <string>

#include "skyring/error.h"
#include "skyring/torch.h"

namespace skyring::torch {

bool isSupported(at::ScalarType type) noexcept {
  switch (type) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kChar:
    case at::kByte:
    case at::kInt:
    case at::kLong:
      return true;
    default:
      return false;
  }
}

DType toDType(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return DType::f32;
    case at::kDouble:
      return DType::f64;
    case at::kHalf:
      return DType::f16;
    case at::kBFloat16:
      return DType::bf16;
    case at::kChar:
      return DType::i8;
    case at::kByte:
      return DType::u8;
    case at::kInt:
      return DType::i32;
    case at::kLong:
      return DType::i64;
    default:
      break;
  }
  SKYRING_THROW(InvalidArgument, ErrorContext{.op = "torch"}, "torch dtype ",
                std::string(c10::toString(type)),
                " has no skyring dtype; supported: Float, Double, Half, BFloat16, Char (int8), "
                "Byte (uint8), Int, Long");
}

at::ScalarType toScalarType(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return at::kDouble;
    case DType::f16:
      return at::kHalf;
    case DType::bf16:
      return at::kBFloat16;
    case DType::i8:
      return at::kChar;
    case DType::u8:
      return at::kByte;
    case DType::i32:
      return at::kInt;
    case DType::i64:
      return at::kLong;
    case DType::f32:
      break;
  }
  return at::kFloat;
}

}  // namespace skyring::torch
