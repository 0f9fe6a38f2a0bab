"""How torch tensors reach skyring._core and come back: descriptions, handles, names, errors.

Tensors cross as (pointer, shape, dtype name) with zero copies. The core does not keep the
memory alive, so every submitted tensor stays referenced from the handle table until its
handle is synchronized (or the runtime shuts down). Results of allgather, reducescatter and
alltoall are the core's buffers, wrapped with torch.frombuffer (zero copies).

Handles are ints, as Horovod's: a table maps each to the core handle, the tensors to keep
alive and a finisher that builds the result once the core handle completed.

Threads: submissions and synchronize may come from any thread (backward hooks); the table
and the name counters are guarded by a lock, the core calls release the GIL themselves.
"""

import itertools
import threading

import torch

from skyring import _core
from skyring.torch._basics import (HorovodInternalError, _UnsupportedTensor, _on_shutdown,
                                   _process_set_id, _require_init)

# dtypes the core carries (and reduces).
_DTYPES = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.uint8: "u8",
    torch.int8: "i8",
}
_CARRIED = "float32, float64, float16, bfloat16, int32, int64, uint8 and int8"


class _Pending:
    """One int handle: what the core runs (core handles, possibly none), what must stay
    alive meanwhile, and what builds the result once every core handle is done."""

    __slots__ = ("cores", "keep", "finish")

    def __init__(self, cores, keep, finish):
        self.cores = cores
        self.keep = keep
        self.finish = finish


_lock = threading.Lock()
_handles = {}
_handle_ids = itertools.count(1)
_name_counters = {}


def _clear():
    with _lock:
        _handles.clear()
        _name_counters.clear()


_on_shutdown.append(_clear)


def register(cores, keep, finish) -> int:
    """Stores a pending call and returns its int handle."""
    handle = next(_handle_ids)
    with _lock:
        _handles[handle] = _Pending(cores, keep, finish)
    return handle


def auto_name(kind: str, process_set_id: int) -> str:
    """A name for a call made with name=None. Counted per operation and process set, so
    ranks that make the same sequence of unnamed calls of a kind in a set agree on names
    (the engine matches calls across ranks by name)."""
    key = (kind, process_set_id)
    with _lock:
        n = _name_counters.get(key, 0)
        _name_counters[key] = n + 1
    return f"{kind}.noname.{n}"


def translate(error):
    """The exception a core error surfaces as: InvalidArgument stays itself (a ValueError
    and a RuntimeError, as Horovod raises ValueError for bad arguments); the rest of the
    group's failures (TransportError, Timeout, Aborted) become HorovodInternalError."""
    if isinstance(error, _core.InvalidArgument):
        return error
    translated = HorovodInternalError(str(error))
    translated.__cause__ = error
    return translated


def submit_all(calls, keep):
    """Submits several core calls for one int handle; if one is refused, the ones already
    submitted stay referenced (under a handle nobody holds) until the runtime shuts down."""
    cores = []
    try:
        for fn, args, kwargs in calls:
            cores.append(submit(fn, *args, **kwargs))
    except BaseException:
        if cores:
            register(cores, keep, lambda: None)
        raise
    return cores


def submit(fn, *args, **kwargs):
    """Calls a core submission, translating its errors."""
    try:
        return fn(*args, **kwargs)
    except _core.Error as e:
        raise translate(e) from e


def check_tensor(tensor, what: str):
    """Refuses what skyring cannot carry, with a message naming it."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise _UnsupportedTensor(f"{what}: sparse tensors ({tensor.layout}) are not supported; "
                                 "use sparse_allreduce_async or .to_dense()")
    if tensor.device.type != "cpu":
        raise _UnsupportedTensor(f"{what}: skyring.torch carries host (CPU) tensors only for now; "
                                 f"got a tensor on {tensor.device}: move it with .cpu()")


def describe(tensor, what: str, movement: bool):
    """(pointer, shape, dtype name, byte_view) of a contiguous host tensor. Data movement
    (allgather, broadcast, alltoall) carries any dtype as raw bytes, one more dimension of
    element size; a reduction refuses dtypes the core cannot reduce."""
    name = _DTYPES.get(tensor.dtype)
    shape = list(tensor.shape)
    if name is not None:
        return tensor.data_ptr(), shape, name, False
    if not movement:
        raise _UnsupportedTensor(f"{what}: skyring cannot reduce tensors of dtype {tensor.dtype}; "
                                 f"it reduces {_CARRIED}")
    return tensor.data_ptr(), shape + [tensor.element_size()], "u8", True


def new_output(tensor, what: str):
    """A contiguous tensor like tensor (for an out-of-place result), once tensor passed the
    checks."""
    check_tensor(tensor, what)
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


def contiguous(tensor):
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def output_tensor(core_handle, dtype, byte_view):
    """The result a core handle allocated (allgather, reducescatter, alltoall) as a tensor
    that shares its memory."""
    buffer = core_handle.output()
    shape = list(output_meta(core_handle, "output_shape", "shape"))
    if byte_view:
        shape = shape[:-1]
    count = 1
    for d in shape:
        count *= d
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)


def output_meta(core_handle, handle_attr, buffer_attr):
    """A fact about a result (its shape, alltoall's received splits), from the handle or
    from its output buffer, wherever this build of the core keeps it."""
    if hasattr(core_handle, handle_attr):
        return getattr(core_handle, handle_attr)
    return getattr(core_handle.output(), buffer_attr)


def set_id(process_set) -> int:
    _require_init()
    return _process_set_id(process_set)


def poll(handle) -> bool:
    with _lock:
        pending = _handles.get(handle)
    if pending is None:
        raise ValueError(f"handle {handle!r} was not created or has been synchronized")
    return all(core.poll() for core in pending.cores)


def synchronize(handle):
    """Waits for a handle and returns its result (None for an unknown handle, as Horovod)."""
    with _lock:
        pending = _handles.get(handle)
    if pending is None:
        return None
    # Every core handle is waited for, even after one failed, so that no memory the pending
    # call keeps alive is released while the engine may still write to it.
    error = None
    for core in pending.cores:
        try:
            core.wait()  # the GIL is released; Ctrl-C still gets through
        except _core.Error as e:
            error = error or e
    with _lock:
        _handles.pop(handle, None)
    if error is not None:
        raise translate(error) from error
    # Copies back into the caller's tensor (a non-contiguous in-place call) are not part of
    # any graph: Horovod's C++ writes them too.
    with torch.no_grad():
        return pending.finish()
