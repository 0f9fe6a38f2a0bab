// main() of the Google Benchmark programs (reduce_bench, compression_bench,
// compression_bench_cuda), held to cli.h's rules: Google Benchmark 1.7 answers some bad
// flags with its help text and exit status 0 (--benchmark_format=xml), others with its own
// message, and a filter that matches nothing (or is no regex) with status 0 and no
// output; here each is "<program>: error: ..." with the usage, exit 2. A benchmark that
// throws ends the program with exit 1 (cli::run).
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <string_view>

#include "cli.h"

namespace skyring::cli {

inline constexpr const char* kBenchmarkFlags =
    "[--benchmark_filter=REGEX] [--benchmark_min_time=SECONDS] [--benchmark_repetitions=N] "
    "[--benchmark_format=console|json|csv] [--benchmark_out=FILE] [...] (--help lists "
    "Google Benchmark's flags)";

// ready(): called once the flags are good, before any benchmark runs; false skips them
// all (exit 0: e.g. no GPU), having said why.
template <typename Ready>
int benchmarkMain(const char* program, int argc, char** argv, Ready&& ready) {
  const std::string usage = std::string(program) + " " + kBenchmarkFlags;
  return run(program, usage.c_str(), [&] {
    for (int i = 1; i < argc; ++i) {
      const std::string_view a = argv[i];
      for (std::string_view flag : {"--benchmark_format=", "--benchmark_out_format="}) {
        if (!a.starts_with(flag)) continue;
        const std::string_view v = a.substr(flag.size());
        if (v != "console" && v != "json" && v != "csv") {
          fail(a, ": the format is console, json or csv");
        }
      }
      if (a == "--benchmark_color=") fail(a, ": expects true, false or auto");
    }
    benchmark::Initialize(&argc, argv);  // removes the flags it understood
    if (argc > 1) fail("unknown or malformed option ", argv[1]);
    if (!ready()) return 0;
    const std::size_t ran = benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    if (ran == 0) fail("no benchmark matches --benchmark_filter");
    return 0;
  });
}

}  // namespace skyring::cli
