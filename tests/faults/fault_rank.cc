// One rank of a fault-injection case (tests/faults/faults.py starts several of these under
// torchrun-style variables or mpirun). It joins with Runtime::init(), runs a fixed sequence
// of collectives (mostly f32 sum allreduces, with an allgather, a broadcast and a barrier
// among them), checks every result exactly, destroys the Runtime and exits. On the rank
// named by --victim it injects one fault at one phase:
//
//   fault_rank [--calls N] [--count N] [--salt S] [--victim R]
//              [--die PHASE | --stop PHASE | --late PHASE:MS]
//
//   PHASE  init      before Runtime::init
//          call:K    just before collective K (0-based)
//          exit      after the last collective, before the Runtime is destroyed
//   die    raise(SIGKILL); stop: raise(SIGSTOP); late: sleep MS milliseconds.
//   --salt S adds S to this process's inputs and to what it expects, so processes of two
//          jobs that end up in one group get sums that the check rejects.
//
// The victim is chosen by global rank before init, from RANK (torchrun-style) or
// OMPI_COMM_WORLD_RANK (mpirun). Output on stdout, one flushed line each, parsed by
// faults.py (times are Unix milliseconds, the runner's clock too):
//
//   fault_rank: rank R pid P start at T
//   fault_rank: rank R injecting KIND at PHASE at T      (victim only, before the fault)
//   fault_rank: rank R checked N calls at T              (all results right)
//   fault_rank: rank R ok                                (Runtime destroyed; exit 0)
//   fault_rank: rank R error at T: <what()>              (a skyring::Error; exit 1)
//   fault_rank: rank R WRONG result in call K            (exit 3)
//   fault_rank: rank R foreign exception at T: <what()>  (not a skyring::Error; exit 2)
//
// The Runtime is destroyed after an error line is printed (as a user's program unwinds),
// so the runner sees how long shutdown takes after a failure. This program never waits
// on anything but the library, whose timeouts bound it.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/exact_data.h"
#include "skyring/runtime.h"

namespace {

using namespace skyring;

enum class FaultKind { die, stop, late };

struct Fault {
  FaultKind kind = FaultKind::die;
  enum class Phase { init, call, exit } phase = Phase::init;
  int call = 0;    // Phase::call only
  int lateMs = 0;  // FaultKind::late only
};

struct Options {
  int calls = 8;
  std::size_t count = 65536;
  int salt = 0;
  int victim = -1;
  std::optional<Fault> fault;
};

long long unixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Every line is flushed at once: the runner reads the output of processes it kills.
template <typename... Args>
void say(const char* format, Args... args) {
  std::printf(format, args...);
  std::fflush(stdout);
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "fault_rank: %s\nusage: fault_rank [--calls N] [--count N] [--salt S] "
               "[--victim R] [--die PHASE | --stop PHASE | --late PHASE:MS]\n"
               "  PHASE: init | call:K | exit\n",
               why);
  std::exit(64);
}

long long parseNumber(const std::string& text, long long min, long long max, const char* what) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < min || v > max) usage(what);
  return v;
}

// "init", "exit" or "call:K"; for late, followed by ":MS".
Fault parseFault(FaultKind kind, std::string text) {
  Fault f;
  f.kind = kind;
  if (kind == FaultKind::late) {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos) usage("--late needs PHASE:MS");
    f.lateMs = static_cast<int>(parseNumber(text.substr(colon + 1), 0, 600000, "bad late MS"));
    text.resize(colon);
  }
  if (text == "init") {
    f.phase = Fault::Phase::init;
  } else if (text == "exit") {
    f.phase = Fault::Phase::exit;
  } else if (text.rfind("call:", 0) == 0) {
    f.phase = Fault::Phase::call;
    f.call = static_cast<int>(parseNumber(text.substr(5), 0, 1000000, "bad call:K"));
  } else {
    usage("PHASE must be init, exit or call:K");
  }
  return f;
}

Options parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) usage("every option takes a value");
    const std::string value = argv[++i];
    if (arg == "--calls") {
      o.calls = static_cast<int>(parseNumber(value, 0, 100000, "bad --calls"));
    } else if (arg == "--count") {
      o.count = static_cast<std::size_t>(parseNumber(value, 1, 1 << 26, "bad --count"));
    } else if (arg == "--salt") {
      o.salt = static_cast<int>(parseNumber(value, -100000, 100000, "bad --salt"));
    } else if (arg == "--victim") {
      o.victim = static_cast<int>(parseNumber(value, 0, 1 << 20, "bad --victim"));
    } else if (arg == "--die" || arg == "--stop" || arg == "--late") {
      if (o.fault) usage("at most one fault");
      o.fault = parseFault(arg == "--die"    ? FaultKind::die
                           : arg == "--stop" ? FaultKind::stop
                                             : FaultKind::late,
                           value);
    } else {
      usage(("unknown option " + arg).c_str());
    }
  }
  return o;
}

// The launcher's rank of this process, known before init.
int launcherRank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 0;
}

const char* kindName(FaultKind k) {
  return k == FaultKind::die ? "die" : k == FaultKind::stop ? "stop" : "late";
}

// Injects the fault if this rank is the victim and the fault is at this phase.
void maybeInject(const Options& o, int rank, Fault::Phase phase, int call = -1) {
  if (!o.fault || rank != o.victim || o.fault->phase != phase) return;
  if (phase == Fault::Phase::call && o.fault->call != call) return;
  const std::string where = phase == Fault::Phase::init   ? "init"
                            : phase == Fault::Phase::exit ? "exit"
                                                          : "call:" + std::to_string(call);
  say("fault_rank: rank %d injecting %s at %s at %lld\n", rank, kindName(o.fault->kind),
      where.c_str(), unixMs());
  switch (o.fault->kind) {
    case FaultKind::die:
      ::raise(SIGKILL);
      break;
    case FaultKind::stop:
      ::raise(SIGSTOP);
      break;
    case FaultKind::late:
      std::this_thread::sleep_for(std::chrono::milliseconds(o.fault->lateMs));
      break;
  }
}

// Element i of rank's input in call k: small integers (exact in f32 for any sum here),
// shifted by the salt.
float inputOf(int rank, int call, std::size_t i, int salt) {
  return static_cast<float>(
      testing::inputValue(ReduceOp::sum, DType::f32, rank, i + static_cast<std::size_t>(call)) +
      salt);
}

std::vector<float> inputFor(int rank, int call, std::size_t count, int salt) {
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i)
    v[i] = inputOf(rank, call, i, salt);
  return v;
}

// Runs collective k and returns whether its result is exactly right. The sequence repeats
// every six calls: three allreduces (one small enough for the shared-memory slots), an
// allgather, a broadcast and a barrier.
bool runCall(Communicator& comm, int k, const Options& o) {
  const int n = comm.size();
  const int me = comm.rank();
  switch (k % 6) {
    case 0:
    case 1:
    case 2: {
      const std::size_t count = k % 6 == 1 ? 7 : o.count;
      auto data = inputFor(me, k, count, o.salt);
      comm.allreduce(view(std::span(data)), ReduceOp::sum);
      for (std::size_t i = 0; i < count; ++i) {
        double want = 0;
        for (int r = 0; r < n; ++r)
          want += inputOf(r, k, i, o.salt);
        if (data[i] != static_cast<float>(want)) return false;
      }
      return true;
    }
    case 3: {
      const std::size_t count = 1000 + static_cast<std::size_t>(k);
      auto in = inputFor(me, k, count, o.salt);
      std::vector<float> out(count * static_cast<std::size_t>(n));
      comm.allgather(view(std::span(in)), view(std::span(out)));
      for (int r = 0; r < n; ++r) {
        for (std::size_t i = 0; i < count; ++i) {
          if (out[static_cast<std::size_t>(r) * count + i] != inputOf(r, k, i, o.salt))
            return false;
        }
      }
      return true;
    }
    case 4: {
      const int root = (k / 6) % n;
      auto buf = me == root ? inputFor(root, k, o.count, o.salt) : std::vector<float>(o.count);
      comm.broadcast(view(std::span(buf)), root);
      return buf == inputFor(root, k, o.count, o.salt);
    }
    default:
      comm.barrier();
      return true;
  }
}

int run(const Options& o, int rank) {
  maybeInject(o, rank, Fault::Phase::init);
  std::unique_ptr<Runtime> rt;
  try {
    rt = Runtime::init();
    if (rt->rank() != rank) {
      say("fault_rank: rank %d error at %lld: Runtime says this is rank %d\n", rank, unixMs(),
          rt->rank());
      return 1;
    }
    for (int k = 0; k < o.calls; ++k) {
      maybeInject(o, rank, Fault::Phase::call, k);
      if (!runCall(rt->world(), k, o)) {
        say("fault_rank: rank %d WRONG result in call %d\n", rank, k);
        return 3;
      }
    }
    say("fault_rank: rank %d checked %d calls at %lld\n", rank, o.calls, unixMs());
    maybeInject(o, rank, Fault::Phase::exit);
  } catch (const Error& e) {
    // Printed while the Runtime still exists; it is destroyed on the way out.
    say("fault_rank: rank %d error at %lld: %s\n", rank, unixMs(), e.what());
    return 1;
  } catch (const std::exception& e) {
    say("fault_rank: rank %d foreign exception at %lld: %s\n", rank, unixMs(), e.what());
    return 2;
  }
  rt.reset();
  say("fault_rank: rank %d ok\n", rank);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parseOptions(argc, argv);
  const int rank = launcherRank();
  say("fault_rank: rank %d pid %d start at %lld\n", rank, static_cast<int>(::getpid()), unixMs());
  return run(options, rank);
}
