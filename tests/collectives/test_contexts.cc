// Communicators nested in communicators (process sets: a SubgroupTransport naming a context)
// and the levels of a hierarchical allreduce inside each, all running at once over one
// in-process world with the same user tag and sequence numbers: only the tag's context and
// level fields (transport/tag_layout.h) keep their messages apart.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/cloud_world.h"
#include "common/run_ranks.h"
#include "skyring/communicator.h"
#include "skyring/inprocess_transport.h"
#include "transport/subgroup_transport.h"

namespace skyring {
namespace {

using transport::SubgroupTransport;
using Scope = SubgroupTransport::Scope;

// The records of `ranks` (numbered in topo), in that order: the topology of a subgroup.
std::shared_ptr<const topology::Topology> restrictTo(const topology::Topology& topo,
                                                     const std::vector<int>& ranks) {
  std::vector<topology::RankRecord> records;
  for (int r : ranks)
    records.push_back(topo.record(r));
  return std::make_shared<const topology::Topology>(std::move(records), topo.costs());
}

// Every rank of comm adds value(rank) for `calls` allreduces of varying counts; each result
// must be the sum over comm's ranks, bit for bit. tag 0 everywhere, so the communicators'
// calls share user tag and sequence numbers.
void allreduces(Communicator& comm, int salt, int calls) {
  for (int call = 0; call < calls; ++call) {
    const std::size_t count = 1 + static_cast<std::size_t>((call * 37 + salt * 11) % 3001);
    std::vector<float> data(count);
    const auto value = [&](int rank, std::size_t i) {
      return static_cast<float>(salt * 100000 + rank * 1000 + static_cast<int>(i % 997) + call);
    };
    for (std::size_t i = 0; i < count; ++i)
      data[i] = value(comm.rank(), i);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
    for (std::size_t i = 0; i < count; ++i) {
      float want = 0;
      for (int r = 0; r < comm.size(); ++r)
        want += value(r, i);
      ASSERT_EQ(data[i], want) << "communicator " << salt << ", call " << call << ", element " << i
                               << " on rank " << comm.rank();
    }
  }
}

// Two clouds of three. The world allreduces hierarchically; set 1 (a context over five of
// the world's ranks, across both clouds) does too, with its levels inside its context; set 2
// is a set of set 1 (a context inside a context: world ranks 1, 3, 4, 5), hierarchical as
// well, so its level groups are three subgroups deep. A level group of the world and the
// same level of a set join the same pair of ranks with equal user tag, sequence, step and
// level: only the context tells them apart.
TEST(Contexts, NestedSetsAndHierarchicalLevelsRunTogether) {
  const auto topo = testing::topologyOf({"A1", "A1", "A2", "B1", "B1", "B2"});
  const std::vector<int> set1 = {0, 1, 3, 4, 5};     // world ranks
  const std::vector<int> set2InSet1 = {1, 2, 3, 4};  // set 1's ranks: world 1, 3, 4, 5
  std::vector<int> set2;
  for (int r : set2InSet1)
    set2.push_back(set1[static_cast<std::size_t>(r)]);
  const auto topo1 = restrictTo(*topo, set1);
  const auto topo2 = restrictTo(*topo, set2);
  Config config;
  config.timeout = std::chrono::milliseconds(30000);
  constexpr int kCalls = 12;

  transport::InProcessWorld world(topo->size());
  testing::runRanks(topo->size(), [&](int r) {
    std::shared_ptr<transport::Transport> t = world.transport(r);
    try {
      Communicator worldComm(t, config, nullptr, topo);
      ASSERT_NE(worldComm.describeAllreduce().find("hierarchical"), std::string::npos);
      std::unique_ptr<Communicator> comm1, comm2;
      std::shared_ptr<SubgroupTransport> t1;
      if (std::find(set1.begin(), set1.end(), r) != set1.end()) {
        t1 = std::make_shared<SubgroupTransport>(t, set1, Scope::context(1), "process set 1");
        comm1 = std::make_unique<Communicator>(t1, config, nullptr, topo1);
        if (std::find(set2InSet1.begin(), set2InSet1.end(), t1->rank()) != set2InSet1.end()) {
          auto t2 = std::make_shared<SubgroupTransport>(t1, set2InSet1, Scope::context(2),
                                                        "process set 2");
          EXPECT_EQ(t2->jobRank(t2->rank()), r);
          comm2 = std::make_unique<Communicator>(t2, config, nullptr, topo2);
        }
      }
      std::vector<std::thread> threads;
      std::vector<std::exception_ptr> errors(3);
      const auto start = [&](std::size_t i, Communicator* comm, int salt) {
        if (comm == nullptr) return;
        threads.emplace_back([&, i, comm, salt] {
          try {
            allreduces(*comm, salt, kCalls);
          } catch (...) {
            errors[i] = std::current_exception();
            t->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed");
          }
        });
      };
      start(0, &worldComm, 0);
      start(1, comm1.get(), 1);
      start(2, comm2.get(), 2);
      for (auto& th : threads)
        th.join();
      for (auto& e : errors)
        if (e) std::rethrow_exception(e);
    } catch (const std::exception& e) {
      t->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed: " + e.what());
      throw;
    }
  });
}

// A level inside a level (an algorithm that forms a subgroup of one of its own subgroups):
// the inner group's id names the message, so it never meets the outer group's message of
// the same tag between the same two ranks.
TEST(Contexts, LevelInsideALevelKeepsItsOwnId) {
  transport::InProcessWorld world(3);
  auto p0 = world.transport(0);
  auto p2 = world.transport(2);
  auto outer0 = std::make_shared<SubgroupTransport>(p0, std::vector<int>{0, 1, 2}, Scope::level(1));
  auto outer2 = std::make_shared<SubgroupTransport>(p2, std::vector<int>{0, 1, 2}, Scope::level(1));
  SubgroupTransport inner0(outer0, {2, 0}, Scope::level(2));
  SubgroupTransport inner2(outer2, {2, 0}, Scope::level(2));
  std::array<std::byte, 1> fromOuter{std::byte{1}}, fromInner{std::byte{2}}, gotOuter{}, gotInner{};
  const auto soon = [] { return transport::Clock::now() + std::chrono::seconds(5); };
  // Receives posted first in the order that would pair them wrongly if the tags were equal.
  auto rInner = inner2.irecv(1, 7, gotInner);
  auto rOuter = outer2->irecv(0, 7, gotOuter);
  ASSERT_TRUE(outer0->isend(2, 7, fromOuter)->waitUntil(soon()));
  ASSERT_TRUE(inner0.isend(0, 7, fromInner)->waitUntil(soon()));
  ASSERT_TRUE(rOuter->waitUntil(soon()));
  ASSERT_TRUE(rInner->waitUntil(soon()));
  EXPECT_EQ(gotOuter[0], std::byte{1});
  EXPECT_EQ(gotInner[0], std::byte{2});
}

}  // namespace
}  // namespace skyring
