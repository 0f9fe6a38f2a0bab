#include <gtest/gtest.h>

#include "skyring/error.h"
#include "skyring/logging.h"

namespace skyring {
namespace {

TEST(Error, MessageCarriesRankPeerAndOperation) {
  try {
    SKYRING_THROW(TransportError, (ErrorContext{2, 3, "allreduce #4"}), "connection lost after ",
                  17, " bytes");
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("[rank 2, allreduce #4, peer 3]"), std::string::npos) << what;
    EXPECT_NE(what.find("connection lost after 17 bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("test_error.cc:"), std::string::npos) << what;
    EXPECT_EQ(e.kind(), ErrorKind::transport);
    EXPECT_EQ(e.rank(), 2);
    EXPECT_EQ(e.peer(), 3);
    EXPECT_EQ(e.op(), "allreduce #4");
    EXPECT_EQ(e.detail(), "connection lost after 17 bytes");
  }
}

TEST(Error, CheckMacroThrowsOnlyWhenFalse) {
  EXPECT_NO_THROW(SKYRING_CHECK_ARG(1 + 1 == 2, {}, "math"));
  try {
    const int count = -1;
    SKYRING_CHECK_ARG(count >= 0, (ErrorContext{0, -1, "broadcast"}), "count is ", count);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("count >= 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("count is -1"), std::string::npos) << e.what();
  }
}

TEST(Error, ThrowErrorPicksTheType) {
  EXPECT_THROW(throwError(ErrorKind::timeout, "x", {}), Timeout);
  EXPECT_THROW(throwError(ErrorKind::transport, "x", {}), TransportError);
  EXPECT_THROW(throwError(ErrorKind::aborted, "x", {}), Aborted);
  EXPECT_THROW(throwError(ErrorKind::invalidArgument, "x", {}), InvalidArgument);
}

TEST(Logging, PrefixesRankAndFiltersLevel) {
  Logger log(LogLevel::info, 3);
  EXPECT_TRUE(log.enabled(LogLevel::warn));
  EXPECT_FALSE(log.enabled(LogLevel::debug));
  ::testing::internal::CaptureStderr();
  SKYRING_LOG(log, info, "hello ", 42);
  SKYRING_LOG(log, debug, "hidden");
  const std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "[skyring r3 info] hello 42\n");
  EXPECT_EQ(parseLogLevel("trace"), LogLevel::trace);
  EXPECT_THROW(parseLogLevel("verbose"), InvalidArgument);
}

}  // namespace
}  // namespace skyring
