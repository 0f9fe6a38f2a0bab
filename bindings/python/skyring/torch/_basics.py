"""Process-wide state of skyring.torch: init, ranks, build queries, reduce ops, process sets.

Horovod keeps these in horovod.common (basics.py, process_sets.py, exceptions.py); here they
sit over skyring._core, which owns the runtime. Names, signatures and exceptions follow
Horovod so that `import skyring.torch as hvd` runs Horovod programs unchanged; where skyring
differs it says so in the docstring (and docs/python.md).

Threads: init/shutdown and process-set changes are collective and belong to the main thread;
the queries may be called from any thread.
"""

import atexit
import warnings
from typing import Optional, Sequence, Union

from skyring import _core


class HorovodInternalError(RuntimeError):
    """A collective failed for the group (a dead, stalled or aborted rank, or ranks that
    submitted one name differently). As Horovod's: elastic training treats it as a reset."""


class _UnsupportedTensor(TypeError, ValueError):
    """A tensor skyring cannot carry (its dtype, device or layout). A TypeError, and also a
    ValueError because Horovod raises ValueError('Tensor type ... is not supported.')."""


# Reduce ops: the values Horovod's C++ library returns (horovod_reduce_op_*), so code that
# stores or compares them keeps working.
Average = 0
Sum = 1
Adasum = 2
Min = 3
Max = 4
Product = 5

_OP_NAMES = {Average: "avg", Sum: "sum", Min: "min", Max: "max", Product: "prod"}

_NOT_INITIALIZED = "skyring has not been initialized; use hvd.init()."


def _op_name(op) -> str:
    """The core's name of a Horovod reduce op; Adasum is refused (skyring has none)."""
    if op == Adasum:
        raise NotImplementedError(
            "skyring does not implement Adasum: use op=hvd.Average (or Sum) instead")
    try:
        return _OP_NAMES[op]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reduce op {op!r}: use hvd.Average, Sum, Min, Max or Product")


def handle_average_backwards_compatibility(op, average):
    """Horovod's rule for the deprecated `average=` argument beside `op=`."""
    if op is not None:
        if average is not None:
            raise ValueError("The op parameter supersedes average. "
                             "Please provide only one of them.")
        return op
    if average is not None:
        warnings.warn("Parameter `average` has been replaced with `op` and will be removed in v1.0",
                      DeprecationWarning)
        return Average if average else Sum
    return Average


def _require_init():
    if not _core.is_initialized():
        raise ValueError(_NOT_INITIALIZED)


class ProcessSet:
    """A set of ranks that run collectives together, as Horovod's ProcessSet.

    Build it from a list of global ranks and pass it to hvd.init(process_sets=[...]) or
    hvd.add_process_set(); once registered it has a process_set_id. Roots given to
    broadcast with a process set are global ranks, as in Horovod."""

    process_set_id = None
    ranks = None
    mpi_comm = None

    def __init__(self, ranks_or_comm):
        try:
            ranks = sorted(ranks_or_comm)
        except TypeError:
            raise ValueError("skyring builds a ProcessSet from a list of ranks only "
                             "(not from an MPI communicator)")
        if any(not isinstance(r, int) for r in ranks):
            raise ValueError("ProcessSet should be initialized with a list of process ranks")
        self.ranks = ranks

    def _invalidate(self):
        self.process_set_id = None

    def size(self) -> Optional[int]:
        """Number of ranks in the set, or None before it is registered."""
        if self.process_set_id is None:
            return None
        return _core.process_set_size(self.process_set_id)

    def rank(self) -> Optional[int]:
        """This process's rank within the set (-1 outside it), or None before registration."""
        if self.process_set_id is None:
            return None
        return _core.process_set_rank(self.process_set_id)

    def included(self) -> Optional[bool]:
        """Whether this process belongs to the set, or None when the ranks are unknown."""
        if self.ranks is None:
            return None
        return _core.rank() in self.ranks

    def _set_rank_of(self, global_rank: int) -> int:
        """The set's numbering of a global rank (the core numbers roots within the set)."""
        if self.process_set_id == 0:
            return global_rank
        try:
            return self.ranks.index(global_rank)
        except ValueError:
            raise ValueError(f"rank {global_rank} is not in process set {self.ranks}")

    def __str__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"

    __repr__ = __str__


global_process_set = ProcessSet([])
global_process_set.process_set_id = 0

# ranks (as a tuple) -> ProcessSet of every set registered through this module; every rank
# adds and removes the same sets in the same order, so the duplicate check agrees everywhere.
_registered = {}


def _process_set_id(process_set) -> int:
    if not isinstance(process_set, ProcessSet):
        raise TypeError(f"process_set must be a hvd.ProcessSet, not {type(process_set).__name__}")
    if process_set.process_set_id is None:
        raise ValueError(f"{process_set} is not registered: pass it to hvd.init(process_sets=...) "
                         "or hvd.add_process_set() first")
    return process_set.process_set_id


def add_process_set(process_set: Union[ProcessSet, Sequence[int]]) -> ProcessSet:
    """Registers a process set after init and returns it. Collective: every rank calls it with
    the same ranks, in the same order as its other additions and removals (as in Horovod;
    skyring needs no HOROVOD_DYNAMIC_PROCESS_SETS)."""
    _require_init()
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    key = tuple(process_set.ranks)
    if key in _registered or list(key) == global_process_set.ranks:
        raise ValueError(f"Attempted to add a duplicate process set: {process_set}")
    process_set.process_set_id = _core.add_process_set(list(key))
    _registered[key] = process_set
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Removes a process set (collective, as add_process_set); False for the global set or one
    that is not registered."""
    _require_init()
    process_set_id = process_set.process_set_id
    if process_set_id is None or process_set_id == 0:
        return False
    _core.remove_process_set(process_set_id)
    _registered.pop(tuple(process_set.ranks), None)
    process_set._invalidate()
    return True


_on_shutdown = []  # callables run before the runtime stops (mpi_ops clears its handles)
_atexit_registered = False


def init(comm=None, process_sets=None):
    """Starts skyring (collective). The world is the job the launcher started (mpirun,
    skyringrun, or torchrun-style variables); `comm` may only name all of it. `process_sets`:
    ProcessSet objects to register now, or "dynamic" (accepted; sets can always be added).
    Calling init again while initialized registers any new sets and does nothing else."""
    global _atexit_registered
    if comm is not None:
        if isinstance(comm, (list, tuple)):
            if comm and sorted(comm) != list(range(len(comm))):
                raise NotImplementedError("skyring runs over the whole job; hvd.init(comm=ranks) "
                                          "is not supported: use process sets instead")
        else:
            raise NotImplementedError("skyring does not take an MPI communicator in hvd.init()")
    if not _core.is_initialized():
        _core.init()
    # Also when skyring was started below this layer (skyring._core.init(), as the DDP hook's
    # init_process_group does): the world's ranks are read from the core either way.
    if global_process_set.ranks != list(range(_core.size())):
        global_process_set.ranks = list(range(_core.size()))
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    if process_sets is None or isinstance(process_sets, str):
        return
    for index, ps in enumerate(process_sets):
        if not isinstance(ps, ProcessSet):
            raise ValueError(f"process_sets entry number {index} is not a hvd.ProcessSet: {ps!r}")
        known = _registered.get(tuple(ps.ranks))
        if known is ps:
            continue
        if known is not None or ps.ranks == global_process_set.ranks:
            raise ValueError(f"skyring could not be initialized because process_sets entry "
                             f"number {index} is a duplicate: {ps}")
        add_process_set(ps)


def shutdown():
    """Stops skyring (collective: returns once every rank has called it, or after the
    configured timeout). Pending handles fail; registered process sets become invalid."""
    if _core.is_initialized():
        _core.shutdown()
    # After the core stopped: pending calls have failed, so their tensors may be released.
    for hook in _on_shutdown:
        hook()
    for ps in _registered.values():
        ps._invalidate()
    _registered.clear()


def is_initialized() -> bool:
    return bool(_core.is_initialized())


def _query(fn):
    _require_init()
    return fn()


def size() -> int:
    """Number of processes in the job."""
    return _query(_core.size)


def local_size() -> int:
    """Number of processes on this node."""
    return _query(_core.local_size)


def cross_size() -> int:
    """Number of nodes holding a process of this process's local rank."""
    return _query(_core.cross_size)


def rank() -> int:
    """This process's rank in the job."""
    return _query(_core.rank)


def local_rank() -> int:
    """This process's rank within its node."""
    return _query(_core.local_rank)


def cross_rank() -> int:
    """The rank of this process's node among the nodes (as Horovod's cross_rank)."""
    return _query(_core.cross_rank)


def is_homogeneous() -> bool:
    """True when every node runs the same number of processes."""
    _require_init()
    return _core.size() == _core.local_size() * _core.cross_size()


def start_timeline(file_path, mark_cycles=False):
    """Writes a Chrome trace of the engine to file_path from now on (skyring's events, not
    Horovod's: no NEGOTIATE_*/CYCLE_START records). mark_cycles is accepted and ignored."""
    _require_init()
    _core.start_timeline(str(file_path))


def stop_timeline():
    """Completes and closes the timeline file."""
    _require_init()
    _core.stop_timeline()


def _built(key) -> bool:
    return bool(_core.built().get(key, False))


def mpi_built() -> bool:
    """True when skyring was built with MPI (its launcher and out-of-band channel)."""
    return _built("mpi")


def mpi_enabled() -> bool:
    """True when this job was launched under mpirun (MPI bootstraps it; data never uses MPI)."""
    return bool(_core.mpi_enabled())


def mpi_threads_supported() -> bool:
    """skyring initialises MPI with MPI_THREAD_MULTIPLE and makes no MPI calls on its data
    path, so programs may use mpi4py beside it. Raises ValueError when MPI is not in use."""
    if not mpi_enabled():
        raise ValueError("MPI is not enabled: this job was not launched under mpirun")
    _require_init()
    return True


def gloo_built() -> bool:
    """skyring has no Gloo backend."""
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> bool:
    """False while skyring.torch carries host tensors only (Horovod returns a version code;
    False compares as 0)."""
    return False


def cuda_built() -> bool:
    """False while skyring.torch refuses device tensors."""
    return False


def rocm_built() -> bool:
    return False


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False
