// skyring._core: the Python face of the process-wide API (skyring/skyring.h), for the
// pure-Python package above it (skyring.torch, docs/python.md).
//
// Tensors cross as (pointer, shape, dtype name) with no copy and no framework headers:
// the Python layer reads them off a torch tensor (or a NumPy array) and keeps a reference
// to it until the call's handle completes; this module does not keep the memory alive.
// Results whose size only the engine knows (allgather, reducescatter, alltoall) are
// allocated here, on the engine thread, and handed to Python as a writable buffer
// (Handle.output()) that torch.frombuffer wraps without a copy.
//
// Threads and the GIL: the engine thread never touches Python. Calls that may block
// (init, shutdown, join, barrier, waits, process sets) release the GIL; a wait wakes
// every 100 ms to let Ctrl-C through. Submissions keep it (they only queue).
//
// Failure: skyring::Error becomes skyring._core.Error (a RuntimeError) or its subclass
// for its kind, with the rank, peer and op as attributes; InvalidArgument is a
// ValueError too.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cstdint>

#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "skyring/skyring.h"

namespace py = pybind11;

namespace skyring::python {
namespace {

// A result buffer the engine writes and Python reads through the buffer protocol.
struct Output {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t size = 0;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> receivedSplits;
};

// One asynchronous call as Python sees it: the engine's handle and, for the calls that
// allocate their result, where it went.
struct PyHandle {
  Handle handle;
  std::shared_ptr<Output> output;
};

// Process sets by id (0: the world), as the Python layer names them. Guarded by mutex;
// cleared at shutdown.
struct Sets {
  std::mutex mutex;
  std::map<int, ProcessSet> byId;
};

Sets& sets() {
  static Sets s;
  return s;
}

ProcessSet setOf(int id) {
  if (id == 0) return {};
  Sets& s = sets();
  std::lock_guard lock(s.mutex);
  auto it = s.byId.find(id);
  SKYRING_CHECK_ARG(it != s.byId.end(), {}, "no process set with id ", id,
                    " (it was never added on this rank, or was removed)");
  return it->second;
}

std::size_t elementsOf(const std::vector<std::int64_t>& shape) {
  std::size_t n = 1;
  for (std::int64_t d : shape) {
    SKYRING_CHECK_ARG(d >= 0, {}, "a tensor's dimensions must not be negative");
    n *= static_cast<std::size_t>(d);
  }
  return n;
}

Tensor tensorOf(std::uintptr_t ptr, std::vector<std::int64_t> shape, const std::string& dtype) {
  const std::size_t count = elementsOf(shape);
  SKYRING_CHECK_ARG(ptr != 0 || count == 0, {}, "a tensor with elements has a null data pointer");
  if (shape.empty()) shape.push_back(1);  // a 0-d tensor travels as one element
  return Tensor{
      BufferView{reinterpret_cast<void*>(ptr), count, parseDType(dtype), MemoryKind::host},
      std::move(shape), nullptr};
}

AllreduceSpec specOf(const std::string& op, double prescale, double postscale,
                     std::string compression) {
  return AllreduceSpec{parseReduceOp(op), prescale, postscale, std::move(compression)};
}

// Allocates an output of rows rows of the input's row shape and dtype.
Tensor allocateRows(Output& out, const Tensor& input, std::int64_t rows) {
  std::vector<std::int64_t> shape = input.shape;
  shape[0] = rows;
  const std::size_t count = elementsOf(shape);
  out.size = count * dtypeSize(input.buffer.dtype);
  out.bytes.reset(new std::byte[out.size == 0 ? 1 : out.size]);
  out.shape = shape;
  return Tensor{BufferView{out.bytes.get(), count, input.buffer.dtype, MemoryKind::host},
                std::move(shape), nullptr};
}

// Waits with the GIL released, waking every 100 ms for signals (Ctrl-C raises
// KeyboardInterrupt in the waiting thread). timeout < 0: no limit. True when done.
bool waitOn(const Handle& h, double timeoutSeconds) {
  using Clock = std::chrono::steady_clock;
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(timeoutSeconds < 0 ? 0 : timeoutSeconds));
  for (;;) {
    bool done;
    {
      py::gil_scoped_release release;
      done = h.waitFor(std::chrono::milliseconds(100));
    }
    if (done) {
      h.wait();  // rethrows the call's error
      return true;
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (timeoutSeconds >= 0 && Clock::now() >= deadline) return false;
  }
}

// The exception classes, created at import.
struct Errors {
  py::object base, invalidArgument, transport, timeout, aborted;
};

Errors& errors() {
  static Errors e;
  return e;
}

void registerErrors(py::module_& m) {
  Errors& e = errors();
  auto make = [&](const char* name, py::object bases, const char* doc) {
    py::object cls = py::reinterpret_steal<py::object>(PyErr_NewExceptionWithDoc(
        (std::string("skyring._core.") + name).c_str(), doc, bases.ptr(), nullptr));
    if (!cls) throw py::error_already_set();
    m.attr(name) = cls;
    return cls;
  };
  e.base = make("Error", py::reinterpret_borrow<py::object>(PyExc_RuntimeError),
                "A skyring call failed; rank, peer and op say where.");
  e.invalidArgument =
      make("InvalidArgument",
           py::make_tuple(e.base, py::reinterpret_borrow<py::object>(PyExc_ValueError)),
           "The call can never work as given (bad dtype, shape, root, setting).");
  e.transport = make("TransportError", e.base,
                     "A peer failed, a connection broke, or ranks disagreed about a call.");
  e.timeout = make("Timeout", e.base, "No progress within the configured timeout.");
  e.aborted = make("Aborted", e.base, "Cancelled: shutdown, or another rank aborted the group.");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& err) {
      Errors& e = errors();
      py::object cls = e.base;
      switch (err.kind()) {
        case ErrorKind::invalidArgument:
          cls = e.invalidArgument;
          break;
        case ErrorKind::transport:
          cls = e.transport;
          break;
        case ErrorKind::timeout:
          cls = e.timeout;
          break;
        case ErrorKind::aborted:
          cls = e.aborted;
          break;
      }
      py::object exc = cls(err.what());
      exc.attr("rank") = err.rank();
      exc.attr("peer") = err.peer();
      exc.attr("op") = err.op();
      exc.attr("detail") = err.detail();
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });
}

PyHandle allreduce(std::string name, std::uintptr_t ptr, std::vector<std::int64_t> shape,
                   const std::string& dtype, const std::string& op, double prescale,
                   double postscale, std::string compression, int set) {
  return {allreduceAsync(std::move(name), tensorOf(ptr, std::move(shape), dtype),
                         specOf(op, prescale, postscale, std::move(compression)), setOf(set)),
          nullptr};
}

PyHandle groupedAllreduce(std::string name, const std::vector<std::uintptr_t>& ptrs,
                          const std::vector<std::vector<std::int64_t>>& shapes,
                          const std::string& dtype, const std::string& op, double prescale,
                          double postscale, std::string compression, int set) {
  SKYRING_CHECK_ARG(ptrs.size() == shapes.size(), {}, "grouped_allreduce_async got ", ptrs.size(),
                    " pointers and ", shapes.size(), " shapes");
  std::vector<Tensor> tensors;
  tensors.reserve(ptrs.size());
  for (std::size_t i = 0; i < ptrs.size(); ++i)
    tensors.push_back(tensorOf(ptrs[i], shapes[i], dtype));
  return {
      groupedAllreduceAsync(std::move(name), std::move(tensors),
                            specOf(op, prescale, postscale, std::move(compression)), setOf(set)),
      nullptr};
}

PyHandle broadcast(std::string name, std::uintptr_t ptr, std::vector<std::int64_t> shape,
                   const std::string& dtype, int root, int set) {
  return {broadcastAsync(std::move(name), tensorOf(ptr, std::move(shape), dtype), root, setOf(set)),
          nullptr};
}

PyHandle allgather(std::string name, std::uintptr_t ptr, std::vector<std::int64_t> shape,
                   const std::string& dtype, int set) {
  Tensor t = tensorOf(ptr, std::move(shape), dtype);
  auto out = std::make_shared<Output>();
  Tensor shapeOnly{BufferView{nullptr, 0, t.buffer.dtype, MemoryKind::host}, t.shape, nullptr};
  Engine::Allocator allocate = [out, shapeOnly](std::int64_t rows) {
    return allocateRows(*out, shapeOnly, rows);
  };
  return {allgatherAsync(std::move(name), std::move(t), std::move(allocate), setOf(set)), out};
}

PyHandle reducescatter(std::string name, std::uintptr_t ptr, std::vector<std::int64_t> shape,
                       const std::string& dtype, const std::string& op, double prescale,
                       double postscale, int set) {
  Tensor t = tensorOf(ptr, std::move(shape), dtype);
  auto out = std::make_shared<Output>();
  Tensor shapeOnly{BufferView{nullptr, 0, t.buffer.dtype, MemoryKind::host}, t.shape, nullptr};
  Engine::Allocator allocate = [out, shapeOnly](std::int64_t rows) {
    return allocateRows(*out, shapeOnly, rows);
  };
  return {reducescatterAsync(std::move(name), std::move(t), std::move(allocate),
                             specOf(op, prescale, postscale, ""), setOf(set)),
          out};
}

PyHandle alltoall(std::string name, std::uintptr_t ptr, std::vector<std::int64_t> shape,
                  const std::string& dtype, std::vector<std::int64_t> splits, int set) {
  Tensor t = tensorOf(ptr, std::move(shape), dtype);
  auto out = std::make_shared<Output>();
  Tensor shapeOnly{BufferView{nullptr, 0, t.buffer.dtype, MemoryKind::host}, t.shape, nullptr};
  Engine::AlltoallAllocator allocate = [out, shapeOnly](std::int64_t rows,
                                                        const std::vector<std::int64_t>& got) {
    out->receivedSplits = got;
    return allocateRows(*out, shapeOnly, rows);
  };
  return {alltoallAsync(std::move(name), std::move(t), std::move(splits), std::move(allocate),
                        setOf(set)),
          out};
}

int addSet(std::vector<int> ranks) {
  ProcessSet set;
  {
    py::gil_scoped_release release;
    set = addProcessSet(std::move(ranks));
  }
  Sets& s = sets();
  std::lock_guard lock(s.mutex);
  s.byId[set.id()] = set;
  return set.id();
}

void removeSet(int id) {
  SKYRING_CHECK_ARG(id != 0, {}, "the world (process set 0) cannot be removed");
  ProcessSet set = setOf(id);
  {
    py::gil_scoped_release release;
    removeProcessSet(set);
  }
  Sets& s = sets();
  std::lock_guard lock(s.mutex);
  s.byId.erase(id);
}

void shutdownAll() {
  {
    Sets& s = sets();
    std::lock_guard lock(s.mutex);
    s.byId.clear();
  }
  py::gil_scoped_release release;
  shutdown();
}

}  // namespace
}  // namespace skyring::python

PYBIND11_MODULE(_core, m) {
  using namespace skyring;
  using namespace skyring::python;
  m.doc() = "skyring's process-wide API over its engine (see skyring.torch for Horovod's)";
  registerErrors(m);

  py::class_<Output, std::shared_ptr<Output>>(m, "Buffer", py::buffer_protocol())
      .def_buffer([](Output& o) {
        return py::buffer_info(o.bytes.get(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(o.size)}, {1}, /*readonly=*/false);
      })
      .def("__len__", [](const Output& o) { return o.size; })
      .def_readonly("shape", &Output::shape)
      .def_readonly("received_splits", &Output::receivedSplits);

  py::class_<PyHandle>(m, "Handle")
      .def("poll", [](const PyHandle& h) { return h.handle.poll(); })
      .def(
          "wait",
          [](const PyHandle& h, std::optional<double> timeout) {
            return waitOn(h.handle, timeout ? *timeout : -1.0);
          },
          py::arg("timeout") = py::none(),
          "Waits (GIL released) until done; raises the call's error. With a timeout in "
          "seconds, returns False if it is still running then.")
      .def("output", [](const PyHandle& h) -> std::shared_ptr<Output> {
        SKYRING_CHECK_ARG(h.output == nullptr || h.handle.poll(), {},
                          "a result is read only after its handle completed");
        return h.output;
      });

  m.def("init", [] {
    py::gil_scoped_release release;
    init();
  });
  m.def("shutdown", &shutdownAll);
  m.def("is_initialized", &isInitialized);
  m.def("rank", &rank);
  m.def("size", &size);
  m.def("local_rank", &localRank);
  m.def("local_size", &localSize);
  m.def("cross_rank", &crossRank);
  m.def("cross_size", &crossSize);
  m.def("mpi_enabled",
        [] { return runtime().config().launch.launcher == LaunchEnvironment::Launcher::mpi; });
  m.def("built", [] {
    py::dict d;
    d["mpi"] = true;  // the bootstrap under mpirun (the data path is UCX and shared memory)
    d["gloo"] = false;
    d["nccl"] = false;  // device tensors are refused until the GPU issue lands
    d["cuda"] = false;
    d["ccl"] = false;
    d["rocm"] = false;
    return d;
  });

  m.def("allreduce_async", &allreduce, py::arg("name"), py::arg("ptr"), py::arg("shape"),
        py::arg("dtype"), py::arg("op") = "sum", py::arg("prescale") = 1.0,
        py::arg("postscale") = 1.0, py::arg("compression") = "", py::arg("process_set") = 0);
  m.def("grouped_allreduce_async", &groupedAllreduce, py::arg("name"), py::arg("ptrs"),
        py::arg("shapes"), py::arg("dtype"), py::arg("op") = "sum", py::arg("prescale") = 1.0,
        py::arg("postscale") = 1.0, py::arg("compression") = "", py::arg("process_set") = 0);
  m.def("broadcast_async", &broadcast, py::arg("name"), py::arg("ptr"), py::arg("shape"),
        py::arg("dtype"), py::arg("root"), py::arg("process_set") = 0);
  m.def("allgather_async", &allgather, py::arg("name"), py::arg("ptr"), py::arg("shape"),
        py::arg("dtype"), py::arg("process_set") = 0);
  m.def("reducescatter_async", &reducescatter, py::arg("name"), py::arg("ptr"), py::arg("shape"),
        py::arg("dtype"), py::arg("op") = "sum", py::arg("prescale") = 1.0,
        py::arg("postscale") = 1.0, py::arg("process_set") = 0);
  m.def("alltoall_async", &alltoall, py::arg("name"), py::arg("ptr"), py::arg("shape"),
        py::arg("dtype"), py::arg("splits") = std::vector<std::int64_t>{},
        py::arg("process_set") = 0);
  m.def(
      "barrier",
      [](int set) {
        ProcessSet ps = setOf(set);
        py::gil_scoped_release release;
        barrier(ps);
      },
      py::arg("process_set") = 0);
  m.def("join", [] {
    py::gil_scoped_release release;
    return join();
  });
  m.def("add_process_set", &addSet, py::arg("ranks"));
  m.def("remove_process_set", &removeSet, py::arg("id"));
  m.def("process_set_ranks", [](int id) {
    if (id == 0) {
      std::vector<int> all(static_cast<std::size_t>(size()));
      for (int r = 0; r < size(); ++r)
        all[static_cast<std::size_t>(r)] = r;
      return all;
    }
    return setOf(id).ranks();
  });
  m.def("process_set_rank", [](int id) { return id == 0 ? rank() : setOf(id).rank(); });
  m.def("process_set_size", [](int id) { return id == 0 ? size() : setOf(id).size(); });
  m.def("process_set_included", [](int id) { return id == 0 || setOf(id).included(); });
  m.def(
      "stats",
      [] {
        const Runtime& rt = runtime();
        const transport::TrafficStats st = rt.stats();
        py::dict out;
        for (auto c : {topology::LinkClass::intraNode, topology::LinkClass::intraCloud,
                       topology::LinkClass::crossCloud}) {
          const auto i = topology::index(c);
          py::dict d;
          d["bytes"] = st.bytes[i];
          d["messages"] = st.messages[i];
          d["egress_dollars"] =
              static_cast<double>(st.bytes[i]) / 1e9 * rt.topology().costs()[c].egressDollarsPerGB;
          out[py::str(std::string(topology::linkClassName(c)))] = d;
        }
        out["egress_dollars"] = st.egressDollars;
        return out;
      },
      "Bytes and messages this rank sent per link class, and their egress price "
      "(Runtime::stats; shared memory inside a node is not a link and is not counted).");
  m.def("start_timeline", &startTimeline, py::arg("path"));
  m.def("stop_timeline", &stopTimeline);
  m.attr("__version__") = SKYRING_VERSION;
}
