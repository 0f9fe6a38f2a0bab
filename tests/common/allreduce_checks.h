// The allreduce sweep every algorithm's tests run: each dtype x op x count, out of place
// (input left untouched) then in place, compared bit for bit with the expected bytes.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/exact_data.h"
#include "skyring/communicator.h"

namespace skyring::testing {

inline std::string where(int rank, DType d, ReduceOp op, std::size_t count, const char* mode) {
  return "rank " + std::to_string(rank) + " " + std::string(dtypeName(d)) + " " +
         std::string(reduceOpName(op)) + " count " + std::to_string(count) + " " + mode;
}

// afterOutOfPlace, if given, runs after the out-of-place call with its input and output
// (for checks such as "equal to the flat ring").
using AllreduceCheck =
    std::function<void(DType, ReduceOp, std::size_t, const std::vector<std::byte>& input,
                       const std::vector<std::byte>& output)>;

inline void expectAllreduceExact(Communicator& comm, std::span<const std::size_t> counts,
                                 const AllreduceCheck& afterOutOfPlace = nullptr) {
  const int n = comm.size();
  for (DType d : kAllDTypes) {
    for (ReduceOp op : kAllReduceOps) {
      for (std::size_t count : counts) {
        const auto expected = expectedResult(op, d, n, count);
        auto input = makeInput(op, d, comm.rank(), count);
        std::vector<std::byte> output(input.size(), std::byte{0x5a});
        comm.allreduce(viewOf(input, d), viewOf(output, d), op);
        ASSERT_TRUE(output == expected) << where(comm.rank(), d, op, count, "out of place");
        ASSERT_TRUE(input == makeInput(op, d, comm.rank(), count)) << "input was modified";
        if (afterOutOfPlace) {
          afterOutOfPlace(d, op, count, input, output);
          if (::testing::Test::HasFatalFailure()) return;
        }
        comm.allreduce(viewOf(input, d), op);
        ASSERT_TRUE(input == expected) << where(comm.rank(), d, op, count, "in place");
      }
    }
  }
}

}  // namespace skyring::testing
