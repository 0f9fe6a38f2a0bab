// skyring-coordinator: the weight-aggregation service (docs/coordinator.md). Parses the
// command line into ServiceOptions, serves until SIGINT or SIGTERM, exits 2 on bad
// options and 1 on a fatal error (a failed checkpoint, say).
#include <signal.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "coordinator/service.h"
#include "skyring/error.h"

namespace {

using skyring::coordinator::LatePolicy;
using skyring::coordinator::OuterKind;
using skyring::coordinator::ServiceOptions;

constexpr const char* kUsage = R"(usage: skyring-coordinator [options]
  --clusters a,b,c         member clusters (names, N of them)            required
  --elements N             the model's element count (f32)               required
  --token-file PATH        the job token (file contents, trailing newline dropped)
  --init PATH              initial weights: N little-endian f32 (default zeros)
  --listen ADDR            listen address, loopback only without TLS     127.0.0.1
  --tls-cert PATH          TLS 1.3 certificate chain (PEM)               (plain TCP)
  --tls-key PATH           its private key (PEM)
  --port P                 port (0: any; printed on stdout)              7070
  --checkpoint-dir DIR     durable state; resumed at start               (none)
  --quorum Q               submissions that close a round at the deadline  N
  --deadline-ms MS         a round's deadline from its opening            600000
  --late drop|carry        a late submission is dropped or carried       drop
  --outer nesterov|average outer optimizer                               nesterov
  --outer-lr LR            Nesterov learning rate                        0.7
  --outer-momentum MU      Nesterov momentum                             0.9
  --max-frame BYTES        largest frame payload accepted                4194368
  --max-connections N      connections served at once                    256
  --idle-timeout-ms MS     a connection with no progress is closed       60000
  --spill-dir DIR          undo logs of in-flight submissions            (memory)
  --metrics-port P         serve GET /metrics (Prometheus) on P (0: any) (off)
  --metrics-listen ADDR    address of /metrics                           127.0.0.1
)";

[[noreturn]] void bad(const std::string& why) {
  std::cerr << "skyring-coordinator: " << why << "\n" << kUsage;
  std::exit(2);
}

template <typename T>
T number(const std::string& flag, const std::string& v) {
  T out{};
  const auto r = std::from_chars(v.data(), v.data() + v.size(), out);
  if (r.ec != std::errc() || r.ptr != v.data() + v.size()) bad(flag + ": not a number: " + v);
  return out;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  ServiceOptions o;
  o.port = 7070;
  std::uint64_t elements = 0;
  std::string init;
  bool quorumSet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) bad(flag + " needs a value");
    const std::string v = argv[++i];
    if (flag == "--clusters") {
      std::stringstream ss(v);
      for (std::string name; std::getline(ss, name, ',');)
        o.aggregator.clusters.push_back(name);
    } else if (flag == "--elements") {
      elements = number<std::uint64_t>(flag, v);
    } else if (flag == "--token-file") {
      o.token = readFile(v);
      while (!o.token.empty() && (o.token.back() == '\n' || o.token.back() == '\r'))
        o.token.pop_back();
    } else if (flag == "--init") {
      init = v;
    } else if (flag == "--tls-cert") {
      o.tlsCertificate = v;
    } else if (flag == "--tls-key") {
      o.tlsKey = v;
    } else if (flag == "--listen") {
      o.address = v;
    } else if (flag == "--port") {
      o.port = number<std::uint16_t>(flag, v);
    } else if (flag == "--checkpoint-dir") {
      o.checkpointDir = v;
    } else if (flag == "--quorum") {
      o.aggregator.quorum = number<std::uint32_t>(flag, v);
      quorumSet = true;
    } else if (flag == "--deadline-ms") {
      o.aggregator.deadline = std::chrono::milliseconds(number<std::int64_t>(flag, v));
    } else if (flag == "--late") {
      if (v != "drop" && v != "carry") bad("--late is drop or carry");
      o.aggregator.late = v == "carry" ? LatePolicy::carry : LatePolicy::drop;
    } else if (flag == "--outer") {
      if (v != "nesterov" && v != "average") bad("--outer is nesterov or average");
      o.aggregator.outer.kind = v == "average" ? OuterKind::average : OuterKind::nesterov;
    } else if (flag == "--outer-lr") {
      o.aggregator.outer.learningRate = number<double>(flag, v);
    } else if (flag == "--outer-momentum") {
      o.aggregator.outer.momentum = number<double>(flag, v);
    } else if (flag == "--max-frame") {
      o.maxFramePayload = number<std::size_t>(flag, v);
    } else if (flag == "--max-connections") {
      o.maxConnections = number<std::size_t>(flag, v);
    } else if (flag == "--idle-timeout-ms") {
      o.idleTimeout = std::chrono::milliseconds(number<std::int64_t>(flag, v));
    } else if (flag == "--metrics-port") {
      o.metricsPort = number<int>(flag, v);
    } else if (flag == "--metrics-listen") {
      o.metricsAddress = v;
    } else if (flag == "--spill-dir") {
      o.aggregator.spillDir = v;
    } else {
      bad("unknown option " + flag);
    }
  }
  if (o.aggregator.clusters.empty()) bad("--clusters is required");
  if (elements == 0) bad("--elements is required (and positive)");
  if (!quorumSet) o.aggregator.quorum = static_cast<std::uint32_t>(o.aggregator.clusters.size());
  o.weightsFrameElements = std::min<std::size_t>(
      o.weightsFrameElements, o.maxFramePayload > 64 ? (o.maxFramePayload - 64) / 4 : 1);
  if (init.empty()) {
    o.initialWeights.assign(elements, 0.0f);
  } else {
    const std::string bytes = readFile(init);
    if (bytes.size() != elements * 4)
      bad(init + " has " + std::to_string(bytes.size()) + " bytes, not " +
          std::to_string(elements) + " f32");
    o.initialWeights.resize(elements);
    std::memcpy(o.initialWeights.data(), bytes.data(), bytes.size());
  }
  try {
    skyring::coordinator::Service service(std::move(o));
    // Signals are waited for on a loop of their own, so stop() comes from outside the
    // service's loop, as for any other caller.
    boost::asio::io_context signals;
    boost::asio::signal_set set(signals, SIGINT, SIGTERM);
    set.async_wait([&service](const boost::system::error_code& ec, int) {
      if (!ec) service.stop();
    });
    std::thread waiter([&signals] { signals.run(); });
    std::cout << "skyring-coordinator: listening on port " << service.port() << ", round "
              << service.openRound();
    if (service.metricsPort() >= 0) std::cout << ", /metrics on port " << service.metricsPort();
    std::cout << std::endl;
    int rc = 0;
    try {
      service.run();
    } catch (const std::exception& e) {
      std::cerr << "skyring-coordinator: " << e.what() << "\n";
      rc = 1;
    }
    signals.stop();
    waiter.join();
    return rc;
  } catch (const skyring::InvalidArgument& e) {
    std::cerr << "skyring-coordinator: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "skyring-coordinator: " << e.what() << "\n";
    return 1;
  }
}
