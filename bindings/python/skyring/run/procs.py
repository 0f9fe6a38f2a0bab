"""Process plumbing shared by both launchers: starting children so that they die with the
launcher, forwarding the user's signals, describing how a rank ended, copying output.

Threads: signal handlers run on the main thread (Python's rule); the local launcher's
output copiers run one thread per stream (the mpirun launcher pumps its one stream from
the main thread: see ChunkCopier) and share one lock per destination so lines never interleave mid-line.
"""

import ctypes
import os
import select
import signal
import sys
import threading
import time
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl() if sys.platform.startswith("linux") else None


def die_with_parent(sig: int, ignore_sigpipe: bool = False) -> Optional[Callable[[], None]]:
    """A preexec_fn that has the kernel send `sig` to the child when the launcher dies, even
    by SIGKILL, so no rank outlives a launcher that could no longer end it. None off Linux.

    ignore_sigpipe: for a child whose stderr is a pipe to this launcher and which must
    outlive the launcher long enough to clean up (mpirun: SIGPIPE from a rank's next line
    of stderr would kill it before the death signal made it end its ranks). Only for
    children that reset SIGPIPE for their own children, as mpirun does."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if ignore_sigpipe:
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(128 + sig)

    return preexec


def describe_exit(rank: int, returncode: int) -> Tuple[str, int]:
    """The line naming a rank that failed, and the launcher's exit code for it (a signal S
    gives 128 + S, as shells and mpirun report it)."""
    if returncode < 0:
        return f"skyringrun: rank {rank} was killed by signal {-returncode}", 128 - returncode
    return f"skyringrun: rank {rank} exited with code {returncode}", returncode


def signal_kill(pgid: int, sig: int) -> None:
    """Sends `sig` to a process group, ignoring one that is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class SignalForwarder:
    """While active, SIGINT, SIGTERM and SIGHUP sent to the launcher call `on_signal(sig)`
    instead of ending it (Ctrl-C reaches the ranks through the launcher: they run in their
    own sessions, out of the terminal's reach). Restores the previous handlers on exit."""

    def __init__(self, on_signal: Callable[[int], None]):
        self._on_signal = on_signal
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "SignalForwarder":
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED_SIGNALS:
                self._previous[sig] = signal.signal(sig, lambda s, _f: self._on_signal(s))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LineCopier(threading.Thread):
    """Copies one child's stream to `dest` line by line, each line prefixed; a last line
    without a newline gets one. Used for --prefix-output, where whole lines matter more than
    latency (a progress bar redrawn with \\r shows once its line ends)."""

    def __init__(self, source: BinaryIO, dest: BinaryIO, lock: threading.Lock, prefix: bytes):
        super().__init__(daemon=True)
        self._source, self._dest, self._lock, self._prefix = source, dest, lock, prefix

    def run(self) -> None:
        with self._source:
            for line in iter(self._source.readline, b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                with self._lock:
                    try:
                        self._dest.write(self._prefix + line)
                        self._dest.flush()
                    except (OSError, ValueError):
                        pass  # our own output closed: keep draining so the rank never blocks


class ChunkCopier:
    """Copies a stream to `dest` as it arrives (partial lines and \\r included, so progress
    bars work) and hands every complete line to `on_line` as well (to recognise mpirun's
    report of which rank failed).

    Not a thread: the caller pumps it from its own loop. The mpirun launcher must stay
    single-threaded, because the kernel sends the parent-death signal to mpirun once for
    every thread of ours that exits: two threads gave mpirun two SIGTERMs, and mpirun
    takes a second signal as "exit now" and leaves its ranks running."""

    def __init__(self, source: BinaryIO, dest: BinaryIO, on_line: Callable[[str], None]):
        self._source, self._dest, self._on_line = source, dest, on_line
        self._fd = source.fileno()
        self._pending = b""
        self.done = False

    def pump(self, timeout: float) -> None:
        """Copies what arrives within `timeout` seconds; sets `done` at the end of the stream."""
        if self.done:
            time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select([self._fd], [], [], timeout)
        except InterruptedError:
            return
        if not ready:
            return
        chunk = os.read(self._fd, 65536)
        if not chunk:
            self._finish()
            return
        try:
            self._dest.write(chunk)
            self._dest.flush()
        except (OSError, ValueError):
            pass
        lines: List[bytes] = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()[-65536:]
        for line in lines:
            self._on_line(line.decode("utf-8", "replace"))

    def drain(self, timeout: float) -> None:
        """Copies the rest of the stream, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            self.pump(min(0.1, max(0.0, deadline - time.monotonic())))
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._source.close()
        if self._pending:
            self._on_line(self._pending.decode("utf-8", "replace"))
            self._pending = b""
