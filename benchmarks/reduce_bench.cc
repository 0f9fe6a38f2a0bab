// Throughput of the CPU reducer per dtype (sum, out of place), in bytes of one input per
// second, beside memcpy of the same size as the peer: a reduction reads two buffers and
// writes one, so memory-bound code runs at about 2/3 of memcpy's rate.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "benchmark_main.h"
#include "compression/reduce.h"

namespace {

void BM_Memcpy(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> a(bytes, std::byte{1}), out(bytes);
  for (auto _ : state) {
    std::memcpy(out.data(), a.data(), bytes);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

void BM_ReduceSum(benchmark::State& state, skyring::DType dtype) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  const std::size_t n = bytes / skyring::dtypeSize(dtype);
  std::vector<std::byte> a(bytes, std::byte{1}), b(bytes, std::byte{2}), out(bytes);
  for (auto _ : state) {
    skyring::compression::reduce(skyring::ReduceOp::sum, dtype, out.data(), a.data(), b.data(), n);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

}  // namespace

BENCHMARK(BM_Memcpy)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, f32, skyring::DType::f32)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, f64, skyring::DType::f64)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, f16, skyring::DType::f16)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, bf16, skyring::DType::bf16)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, i8, skyring::DType::i8)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(BM_ReduceSum, i32, skyring::DType::i32)->Arg(1 << 20)->Arg(16 << 20);

int main(int argc, char** argv) {
  return skyring::cli::benchmarkMain("reduce_bench", argc, argv, [] { return true; });
}
