#include "skyring/dtype.h"

#include <string>

#include "skyring/error.h"
#include "skyring/reduce_op.h"

namespace skyring {

std::size_t dtypeSize(DType dtype) noexcept {
  switch (dtype) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::i8:
    case DType::u8:
      return 1;
  }
  return 0;
}

std::string_view dtypeName(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i8:
      return "i8";
    case DType::u8:
      return "u8";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

DType parseDType(std::string_view name) {
  for (DType d : kAllDTypes) {
    if (dtypeName(d) == name) return d;
  }
  SKYRING_THROW(InvalidArgument, {}, "unknown dtype '", name,
                "' (expected f32, f64, f16, bf16, i8, u8, i32 or i64)");
}

bool isFloatingPoint(DType dtype) noexcept {
  return dtype == DType::f32 || dtype == DType::f64 || dtype == DType::f16 || dtype == DType::bf16;
}

std::string_view reduceOpName(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::min:
      return "min";
    case ReduceOp::max:
      return "max";
    case ReduceOp::prod:
      return "prod";
  }
  return "?";
}

ReduceOp parseReduceOp(std::string_view name) {
  for (ReduceOp op : kAllReduceOps) {
    if (reduceOpName(op) == name) return op;
  }
  SKYRING_THROW(InvalidArgument, {}, "unknown reduce op '", name,
                "' (expected sum, avg, min, max or prod)");
}

}  // namespace skyring
