// A borrowed, typed view of memory: pointer, element count, dtype and where it lives.
//
// Ownership: a BufferView never owns memory; the caller keeps it alive for as long as
// the call that received the view (or the handle it returned) is in flight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "skyring/dtype.h"

namespace skyring {

enum class MemoryKind : std::uint8_t { host, cuda };

struct BufferView {
  void* data = nullptr;
  std::size_t count = 0;
  DType dtype = DType::f32;
  MemoryKind memory = MemoryKind::host;

  std::size_t bytes() const noexcept { return count * dtypeSize(dtype); }
  std::span<std::byte> byteSpan() const noexcept {
    return {static_cast<std::byte*>(data), bytes()};
  }
  // Elements [offset, offset + n) of this view; the caller keeps the range in bounds.
  BufferView slice(std::size_t offset, std::size_t n) const noexcept {
    return {static_cast<std::byte*>(data) + offset * dtypeSize(dtype), n, dtype, memory};
  }
};

// Views over typed host containers without spelling the dtype.
template <typename T>
constexpr DType dtypeOf();
template <>
constexpr DType dtypeOf<float>() {
  return DType::f32;
}
template <>
constexpr DType dtypeOf<double>() {
  return DType::f64;
}
template <>
constexpr DType dtypeOf<Float16>() {
  return DType::f16;
}
template <>
constexpr DType dtypeOf<BFloat16>() {
  return DType::bf16;
}
template <>
constexpr DType dtypeOf<std::int8_t>() {
  return DType::i8;
}
template <>
constexpr DType dtypeOf<std::uint8_t>() {
  return DType::u8;
}
template <>
constexpr DType dtypeOf<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtypeOf<std::int64_t>() {
  return DType::i64;
}

template <typename T>
BufferView view(std::span<T> s) noexcept {
  return {const_cast<std::remove_const_t<T>*>(s.data()), s.size(),
          dtypeOf<std::remove_const_t<T>>(), MemoryKind::host};
}

}  // namespace skyring
