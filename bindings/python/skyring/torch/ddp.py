"""skyring.torch.ddp: skyring's allreduce as a DistributedDataParallel communication hook.

    state = DDPHookState(compression="int8")       # or None: the defaults
    model.register_comm_hook(state, ddp_comm_hook)

DDP hands the hook one bucket of gradients at a time (a flat tensor, the same buckets on
every rank); the hook submits it to skyring's engine as an average under the name
"<state.name>.bucket.<index>" and returns a torch.futures.Future that completes with the
averaged bucket, so the hierarchy and the cross-cloud codec apply without leaving DDP.
DDP still needs a torch.distributed process group for its own setup (the broadcast of the
initial parameters, the bucket order): init_process_group() makes one beside skyring
without a port clash under any launcher. docs/python.md, "DistributedDataParallel: the
comm hook".

Ownership: the hook keeps the bucket's tensor (and, for a CUDA bucket, its host copy)
referenced until its handle completes; the engine reads and writes that memory meanwhile,
as DDP allows until the future completes.
Threads: the hook runs on DDP's (autograd) thread and only submits. One waiter thread per
process, started on first use, waits on the handles in submission order (Handle.wait
releases the GIL) and completes the futures, so neither DDP's thread nor the engine's
blocks on Python.
Failure: a failed submission (skyring not initialised, a dtype skyring does not carry, a
bad compression spec) or a failed collective (a peer gone, shapes that differ between
ranks, a timeout) fails the future with a RuntimeError that quotes skyring's error (its
class and message, which names the rank, peer and op), so DDP raises it from backward()
instead of hanging.
"""

import datetime
import os
import queue
import socket
import threading
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist

from skyring import _core

__all__ = ["DDPHookState", "ddp_comm_hook", "init_process_group"]

_DTYPES = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
}


class DDPHookState:
    """Options of ddp_comm_hook, passed as register_comm_hook's state.

    compression: the codec for this model's gradients, applied where the topology says
        (by default only on the cross-cloud hop): "default" is the job's
        SKYRING_COMPRESSION (what skyring.torch's DistributedOptimizer passes for
        gradients); "" or "none" sends them exact; any other value is a codec spec
        ("int8", "fp16", "bf16", "topk:0.01", "powersgd:4", "sign"; docs/compression.md).
    process_set: the ranks that average, as a process set id or an object with a
        process_set_id (skyring.torch's ProcessSet); 0, the default, is every rank. It
        must be the ranks of the DDP model's process_group.
    name: the prefix of the engine's names for this model's buckets. Two models whose
        backward passes overlap need different names (a name may be in flight once);
        every rank must give a model the same one.
    """

    __slots__ = ("compression", "process_set", "name")

    def __init__(self, compression: str = "default", process_set: Union[int, Any] = 0,
                 name: str = "ddp"):
        if not isinstance(compression, str):
            raise TypeError(f"compression must be a str (a codec spec), not "
                            f"{type(compression).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        set_id = getattr(process_set, "process_set_id", process_set)
        if isinstance(set_id, bool) or not isinstance(set_id, int) or set_id < 0:
            raise ValueError(f"process_set must be a process set id (an int >= 0) or a "
                             f"ProcessSet, not {process_set!r}")
        self.compression = compression
        self.process_set = set_id
        self.name = name

    def __repr__(self):
        return (f"DDPHookState(compression={self.compression!r}, "
                f"process_set={self.process_set}, name={self.name!r})")


class _Waiter:
    """The process's waiter thread and its queue of (handle, finish, fail).

    Handles are waited on in submission order: DDP waits for every bucket of a backward
    pass before it goes on, so a later bucket completing first gains nothing. A thread
    lost to fork() is started again in the child on its first submission."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def submit(self, handle, finish: Callable[[], None],
               fail: Callable[[BaseException], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # Daemon: a pending handle must not keep the interpreter from exiting.
                self._thread = threading.Thread(target=self._run, name="skyring-ddp-waiter",
                                                daemon=True)
                self._thread.start()
        self._queue.put((handle, finish, fail))

    def _run(self) -> None:
        while True:
            handle, finish, fail = self._queue.get()
            try:
                handle.wait()
                finish()
            except BaseException as e:  # noqa: B902 - the future carries whatever failed
                try:
                    fail(e if isinstance(e, Exception) else RuntimeError(repr(e)))
                except BaseException:  # the future was completed already: nothing to tell
                    pass
            del handle, finish, fail  # drop the tensors before blocking on the next


_waiter = _Waiter()
_DEFAULT_STATE = DDPHookState()


def ddp_comm_hook(state: Optional[DDPHookState],
                  bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: averages the bucket across the ranks with skyring.

    Register it with model.register_comm_hook(state, ddp_comm_hook), state a DDPHookState
    or None (compression "default", every rank). Returns a future that completes with
    the bucket's tensor averaged in place, or fails with a RuntimeError that quotes
    skyring's error (its class name and message: rank, peer, op).
    """
    if state is None:
        state = _DEFAULT_STATE
    elif not isinstance(state, DDPHookState):
        raise TypeError(f"ddp_comm_hook's state must be a DDPHookState or None, not "
                        f"{type(state).__name__}")
    buf = bucket.buffer()
    on_cuda = buf.device.type == "cuda"
    # A future that completes with a CUDA tensor must know its device (torch checks).
    fut: torch.futures.Future = torch.futures.Future(devices=[buf.device] if on_cuda else None)
    # DDP reads the returned future's value in C++, where an error set with set_exception
    # is only a value that does not cast to a tensor; re-raised by a callback, it fails
    # the chained future, and DDP raises it (a RuntimeError quoting skyring's error).
    result = fut.then(_value)
    try:
        dtype = _DTYPES.get(buf.dtype)
        if dtype is None:
            raise _core.InvalidArgument(
                f"ddp_comm_hook: skyring does not carry {buf.dtype} gradients (it takes "
                f"{', '.join(str(d) for d in _DTYPES)})")
        # The engine works on host memory: a CUDA bucket goes through a host copy (taken
        # here, on DDP's thread and stream, so the gradients are final).
        work = buf.to("cpu") if buf.device.type != "cpu" else buf
        if not work.is_contiguous():
            work = work.contiguous()
        handle = _core.allreduce_async(f"{state.name}.bucket.{bucket.index()}",
                                       work.data_ptr(), list(work.shape), dtype, op="avg",
                                       compression=state.compression,
                                       process_set=state.process_set)
    except Exception as e:
        fut.set_exception(e)
        return result

    def finish() -> None:
        if work is not buf:
            buf.copy_(work)
        fut.set_result(buf)

    _waiter.submit(handle, finish, fut.set_exception)
    return result


def _value(fut: torch.futures.Future) -> torch.Tensor:
    return fut.wait()  # raises the error set with set_exception


def _rendezvous_host() -> str:
    """Where rank 0's torch.distributed store listens: MASTER_ADDR when the launcher set
    it (skyringrun, torchrun, or the user under mpirun), loopback when every rank is on
    this host, else this host's name (which the other hosts must resolve)."""
    host = os.environ.get("MASTER_ADDR", "")
    if host:
        return host
    if _core.local_size() == _core.size():
        return "127.0.0.1"
    return socket.gethostname()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_process_group(backend: str = "gloo",
                       timeout: Optional[datetime.timedelta] = None) -> None:
    """Initialises torch.distributed's default group (for DDP's own setup traffic) with
    skyring's ranks, unless it is initialised already; initialises skyring first if it
    is not. Collective: every rank of the job calls it.

    Rank 0 picks a free port on its host (MASTER_ADDR when set) and tells the others
    through a skyring broadcast, so torch's store never meets skyring's: under
    skyringrun's local launcher and torchrun-style launches, skyring's store is on
    MASTER_PORT. The port is free when picked; another program that takes it before
    torch listens makes torch's init fail, and a new call picks another.
    """
    if dist.is_initialized():
        return
    _core.init()
    rank, size = _core.rank(), _core.size()
    endpoint = torch.zeros(256, dtype=torch.uint8)
    if rank == 0:
        host = _rendezvous_host()
        port = _free_port(host)
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raw = text.encode()
        if len(raw) >= endpoint.numel():
            raise _core.InvalidArgument(f"MASTER_ADDR is too long: {host!r}")
        endpoint[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    _core.broadcast_async("skyring.torch.ddp.rendezvous", endpoint.data_ptr(),
                          [endpoint.numel()], "u8", root=0).wait()
    text = bytes(endpoint.tolist()).rstrip(b"\0").decode()
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, init_method=f"tcp://{text}", rank=rank, world_size=size,
                            **kwargs)
