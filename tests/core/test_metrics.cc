// The metrics registry and its text exposition format (Prometheus 0.0.4).
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "skyring/error.h"
#include "skyring/metrics.h"

namespace skyring::metrics {
namespace {

TEST(Metrics, CounterAndGaugeRenderWithConstantLabels) {
  Registry r({{"rank", "3"}, {"job", "j\"1"}});
  auto& sent = r.counter("skyring_x_total", "Things\nsent.", {"link"});
  sent.with({"cross_cloud"}).add(5);
  sent.with({"cross_cloud"}).add(2.5);
  sent.with({"cross_cloud"}).add(-1);  // ignored: a counter only goes up
  r.gauge("skyring_depth", "Depth.").with({}).set(7);
  const std::string text = r.render();
  EXPECT_NE(text.find("# HELP skyring_x_total Things\\nsent.\n# TYPE skyring_x_total counter\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("skyring_x_total{rank=\"3\",job=\"j\\\"1\",link=\"cross_cloud\"} 7.5\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("# TYPE skyring_depth gauge\nskyring_depth{rank=\"3\",job=\"j\\\"1\"} 7\n"),
            std::string::npos)
      << text;
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInf) {
  Registry r;
  auto& h = r.histogram("skyring_seconds", "Latency.", {"level"}, {0.1, 1}).with({"cloud"});
  h.observe(0.05);
  h.observe(0.1);  // le is inclusive
  h.observe(0.5);
  h.observe(3);
  const std::string text = r.render();
  EXPECT_NE(text.find("# TYPE skyring_seconds histogram\n"
                      "skyring_seconds_bucket{level=\"cloud\",le=\"0.1\"} 2\n"
                      "skyring_seconds_bucket{level=\"cloud\",le=\"1\"} 3\n"
                      "skyring_seconds_bucket{level=\"cloud\",le=\"+Inf\"} 4\n"
                      "skyring_seconds_sum{level=\"cloud\"} 3.65\n"
                      "skyring_seconds_count{level=\"cloud\"} 4\n"),
            std::string::npos)
      << text;
}

TEST(Metrics, AdvanceToNeverLowers) {
  Counter c;
  c.advanceTo(10);
  c.advanceTo(4);
  EXPECT_EQ(c.value(), 10);
}

TEST(Metrics, CollectHooksRunAtRender) {
  Registry r;
  Counter& c = r.counter("skyring_mirrored_total", "Mirrored.").with({});
  int calls = 0;
  r.onCollect([&] { c.advanceTo(++calls * 100); });
  EXPECT_NE(r.render().find("skyring_mirrored_total 100\n"), std::string::npos);
  EXPECT_NE(r.render().find("skyring_mirrored_total 200\n"), std::string::npos);
}

TEST(Metrics, BadNamesAndMismatchesThrow) {
  Registry r;
  EXPECT_THROW(r.counter("9bad", "x"), InvalidArgument);
  EXPECT_THROW(r.counter("ok_total", "x", {"le"}), InvalidArgument);
  EXPECT_THROW(r.histogram("h", "x", {}, {1, 1}), InvalidArgument);
  r.counter("ok_total", "x", {"a"});
  EXPECT_THROW(r.gauge("ok_total", "x", {"a"}), InvalidArgument);
  EXPECT_THROW(r.counter("ok_total", "x", {"b"}), InvalidArgument);
  EXPECT_THROW(r.counter("ok_total", "x", {"a"}).with({}), InvalidArgument);
  using Labels = std::vector<std::pair<std::string, std::string>>;
  EXPECT_THROW(Registry(Labels{{"bad-name", "x"}}), InvalidArgument);
}

TEST(Metrics, EmptyFamilyHasOnlyItsHeader) {
  Registry r;
  r.counter("skyring_none_total", "Nothing yet.", {"codec"});
  EXPECT_EQ(r.render(),
            "# HELP skyring_none_total Nothing yet.\n# TYPE skyring_none_total counter\n");
}

// Recording from many threads loses nothing (relaxed atomics, no lock).
TEST(Metrics, ConcurrentRecording) {
  Registry r;
  Counter& c = r.counter("skyring_n_total", "n").with({});
  Histogram& h = r.histogram("skyring_h", "h", {}, latencyBuckets()).with({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.add();
        h.observe(0.001);
      }
    });
  }
  std::thread scraper([&] {
    for (int i = 0; i < 50; ++i)
      (void)r.render();
  });
  for (auto& t : threads)
    t.join();
  scraper.join();
  EXPECT_EQ(c.value(), 40000);
  EXPECT_EQ(h.count(), 40000u);
  EXPECT_NEAR(h.sum(), 40.0, 1e-6);
}

}  // namespace
}  // namespace skyring::metrics
