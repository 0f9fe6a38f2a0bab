// The engine's live metrics (engine/engine_metrics.h): what a training-like run over two
// clouds records, and how a call's phases name its algorithm.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/cloud_world.h"
#include "engine/engine_metrics.h"
#include "engine/engine_test_util.h"
#include "skyring/communicator.h"
#include "skyring/engine.h"
#include "skyring/metrics.h"

namespace skyring {
namespace {

bool has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

// The value of the first sample whose line starts with prefix; -1 when none.
double sample(const std::string& text, const std::string& prefix) {
  const auto at = text.find("\n" + prefix);
  if (at == std::string::npos) return -1;
  const auto end = text.find('\n', at + 1);
  const std::string line = text.substr(at + 1, end - at - 1);
  return std::stod(line.substr(line.rfind(' ') + 1));
}

// Two clouds of two ranks, int8 across them: steps of a small exact tensor and a large
// compressed one (enough steps for replay to take over), every rank with its registry.
TEST(EngineMetrics, TwoCloudsRecordEverySeries) {
  Config c;
  c.compression = "int8";
  c.timeout = std::chrono::seconds(60);
  std::vector<std::string> texts(4);
  testing::runCloudRanks(testing::topologyOf({"A1", "A1", "B1", "B1"}), c, [&](Communicator& comm) {
    auto registry = std::make_shared<metrics::Registry>();
    EngineOptions options;
    options.metrics = registry;
    Engine engine(comm, options);
    std::vector<float> small(100), big(64 * 1024);
    AllreduceSpec grads{ReduceOp::avg};
    grads.compression = std::string(kDefaultCompression);
    for (int step = 0; step < 6; ++step) {
      auto hs = engine.allreduceAsync("small", Tensor::of(small), {ReduceOp::sum});
      auto hb = engine.allreduceAsync("big", Tensor::of(big), grads);
      testing::finish(hs);
      testing::finish(hb);
    }
    texts[static_cast<std::size_t>(comm.rank())] = registry->render();
  });
  for (const std::string& text : texts) {
    EXPECT_GT(sample(text,
                     "skyring_collective_seconds_count{op=\"allreduce\",algorithm="
                     "\"hierarchical\"}"),
              0)
        << text;
    EXPECT_GT(sample(text, "skyring_phase_seconds_count{level=\"cross-cloud\",phase=\"encode\"}"),
              0)
        << text;
    const double in = sample(text, "skyring_codec_input_bytes_total{codec=\"int8");
    const double out = sample(text, "skyring_codec_encoded_bytes_total{codec=\"int8");
    EXPECT_GT(in, 3 * out) << text;  // int8 and a scale per block: nearly 4x
    EXPECT_GT(out, 0) << text;
    EXPECT_TRUE(has(text, "\nskyring_engine_queue_depth 0\n")) << text;
    EXPECT_TRUE(has(text, "\nskyring_engine_failed_handles_total 0\n")) << text;
    EXPECT_GE(sample(text, "skyring_fusion_fill_ratio_count"), 6) << text;
  }
}

// Which phases a call reported names the algorithm that ran it.
TEST(EngineMetrics, CallMeterNamesTheAlgorithm) {
  auto registry = std::make_shared<metrics::Registry>();
  engine::EngineMetrics m(registry, 1024);
  auto phase = [](const char* name, const char* level) {
    CollectivePhase p;
    p.name = name;
    p.level = level;
    p.begin = p.end = std::chrono::steady_clock::now();
    return p;
  };
  {
    engine::CallMeter call(m, nullptr);
    EXPECT_EQ(call.algorithm(), "ring");
    call.phase(phase("node allreduce", "node"));
    EXPECT_EQ(call.algorithm(), "shared_memory");
  }
  {
    engine::CallMeter call(m, nullptr);
    call.phase(phase("cloud reduce-scatter", "cloud"));
    call.phase(phase("cross-cloud allreduce", "cross-cloud"));
    EXPECT_EQ(call.algorithm(), "hierarchical");
    call.phase(phase("node reduce-scatter", "node"));
    EXPECT_EQ(call.algorithm(), "node_level");
    call.done("allreduce");
  }
  // Without a registry nothing is recorded, and the observer is the next one (none here).
  engine::EngineMetrics off(nullptr, 1024);
  engine::CallMeter quiet(off, nullptr);
  EXPECT_EQ(quiet.observer(), nullptr);
  const std::string text = registry->render();
  EXPECT_TRUE(
      has(text, "skyring_collective_seconds_count{op=\"allreduce\",algorithm=\"node_level\"} 1\n"))
      << text;
  EXPECT_TRUE(has(text,
                  "skyring_phase_seconds_count{level=\"cross-cloud\",phase=\"cross-cloud "
                  "allreduce\"} 1\n"))
      << text;
}

}  // namespace
}  // namespace skyring
