"""The mpirun launcher: one Open MPI command line (MPMD when --clouds splits the ranks) and
a watch on mpirun's stderr to name the rank that failed.

Open MPI 4.1's rules that shape the command line:
- `-x NAME` applies to its own app context only, so every context repeats the SKYRING_*
  variables; each cloud is a context of its own with `-x SKYRING_CLOUD=cloud`. Contexts take
  ranks in order, so --clouds aws:2,gcp:2 gives ranks 0-1 aws and 2-3 gcp.
- the hosts (-H or --hostfile) are repeated in every context too: the contexts then share
  one allocation, filling its slots in order (a second context does not start over).
- mpirun refuses root without --allow-run-as-root, and more ranks than slots (by default
  the cores) without --oversubscribe; --bind-to none because ranks of a training job run
  threads of their own (the engine, data loaders) that one bound core would starve.

Ownership: MpiJob owns the mpirun process (in a session of its own, so Ctrl-C reaches it
once, from us) and copies its stderr from the main thread. mpirun owns the ranks: it puts
each in a process group of its own and ends them all when one fails or when it gets
SIGINT/SIGTERM.

If we die, even by SIGKILL, the kernel sends mpirun SIGTERM and mpirun ends the ranks.
Two things made mpirun leave them running instead (about one launch in two):
- a rank's next line of stderr, written into our dead pipe, killed mpirun by SIGPIPE; so
  mpirun ignores SIGPIPE (it resets SIGPIPE for the ranks it starts);
- the kernel sends the death signal once for every thread of ours that exits, and mpirun
  takes a second SIGTERM as "exit now, without cleanup"; so we keep one thread while
  mpirun runs (procs.ChunkCopier is pumped, not a thread). A program that calls
  skyring.run.main from a thread of a multi-threaded process loses this guarantee.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import List, Mapping, Optional, TextIO, Tuple

from .options import LaunchOptions, UsageError
from .procs import ChunkCopier, SignalForwarder, describe_exit, die_with_parent, signal_kill


def find_open_mpi() -> Optional[str]:
    """mpirun's path when it is on PATH and is Open MPI's (whose options we speak)."""
    path = shutil.which("mpirun")
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout + out.stderr
    return path if ("Open MPI" in text or "OpenRTE" in text) else None


def physical_cores() -> int:
    """Cores this process may run on, counting hardware threads of one core once: Open
    MPI's default slots without hosts."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as p, open(f"{topo}/core_id") as c:
                cores.add((p.read().strip(), c.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def build_command(
    opts: LaunchOptions,
    environ: Mapping[str, str],
    mpirun: str = "mpirun",
    as_root: bool = False,
    cores: int = 1,
) -> List[str]:
    """mpirun's argument vector for this launch (pure, for tests and --verbose)."""
    if ":" in opts.command:
        raise UsageError(
            "the command has an argument ':', which mpirun reads as the end of an app "
            "context: quote it differently, or use --no-mpi"
        )
    cmd = [mpirun, "--bind-to", "none"]
    if as_root:
        cmd.append("--allow-run-as-root")
    slots = opts.total_slots() if opts.hosts else cores
    if opts.np > slots:
        cmd.append("--oversubscribe")
    if opts.prefix_output:
        cmd.append("--tag-output")
    cmd += opts.mpi_args

    hosts: List[str] = []
    if opts.hostfile is not None:
        hosts = ["--hostfile", opts.hostfile]
    elif opts.hosts:
        hosts = ["-H", ",".join(f"{h.name}:{h.slots}" for h in opts.hosts)]
    contexts: List[Tuple[Optional[str], int]] = opts.clouds or [(None, opts.np)]
    for i, (cloud, count) in enumerate(contexts):
        if i:
            cmd.append(":")
        cmd += ["-np", str(count)] + hosts
        for name in sorted(environ):
            if name.startswith("SKYRING_") and not (cloud and name == "SKYRING_CLOUD"):
                if name not in opts.extra_env:
                    cmd += ["-x", name]
        for name, value in opts.extra_env.items():
            cmd += ["-x", name if value is None else f"{name}={value}"]
        if cloud:
            cmd += ["-x", f"SKYRING_CLOUD={cloud}"]
        cmd += opts.command
    return cmd


# Open MPI 4.1's reports of the first rank to fail (to stderr, in a box):
#   Process name: [[9416,1],1]
#   Exit code:    3
#   mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).
_PROCESS_NAME = re.compile(r"^\s*Process name:\s*\[\[\d+,\d+\],(\d+)\]")
_EXIT_CODE = re.compile(r"^\s*Exit code:\s*(\d+)")
_SIGNALLED = re.compile(r"mpirun noticed that process rank (\d+) .* exited on signal (\d+)")


class FailureScanner:
    """Reads mpirun's stderr line by line and keeps the first rank it names as failed."""

    def __init__(self) -> None:
        self.failure: Optional[Tuple[int, int]] = None  # (rank, returncode as Popen gives)
        self._named_rank: Optional[int] = None

    def __call__(self, line: str) -> None:
        if self.failure is not None:
            return
        m = _SIGNALLED.search(line)
        if m:
            self.failure = (int(m.group(1)), -int(m.group(2)))
            return
        m = _PROCESS_NAME.match(line)
        if m:
            self._named_rank = int(m.group(1))
            return
        m = _EXIT_CODE.match(line)
        if m and self._named_rank is not None:
            self.failure = (self._named_rank, int(m.group(1)))


class MpiJob:
    def __init__(
        self, opts: LaunchOptions, environ: Mapping[str, str], mpirun: str, err: TextIO = sys.stderr
    ):
        self._opts = opts
        self._err = err
        self._cmd = build_command(
            opts, environ, mpirun, as_root=os.geteuid() == 0, cores=physical_cores()
        )
        self._proc: Optional[subprocess.Popen] = None
        self._signal: Optional[int] = None
        self._kill_at: Optional[float] = None

    @property
    def command(self) -> List[str]:
        return self._cmd

    def _say(self, line: str) -> None:
        try:
            print(line, file=self._err, flush=True)
        except RuntimeError:
            pass  # a signal handler interrupted another print (reentrant call): skip it

    def _on_signal(self, sig: int) -> None:
        # mpirun ends the job on SIGINT/SIGTERM itself, and forcibly on a second one.
        if self._signal is None:
            self._signal = sig
            self._say(f"skyringrun: got signal {sig}; passing it to mpirun")
            self._kill_at = time.monotonic() + self._opts.kill_grace + 5.0
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        if self._opts.verbose:
            self._say(f"skyringrun: {shlex.join(self._cmd)}")
        scanner = FailureScanner()
        with SignalForwarder(self._on_signal):
            try:
                self._proc = subprocess.Popen(
                    self._cmd,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=die_with_parent(signal.SIGTERM, ignore_sigpipe=True),
                )
            except OSError as e:
                self._say(f"skyringrun: cannot start {self._cmd[0]}: {e.strerror}")
                return 127
            if self._signal is not None:  # arrived while mpirun was starting
                self._proc.send_signal(self._signal)
            copier = ChunkCopier(self._proc.stderr, sys.stderr.buffer, scanner)
            while self._proc.poll() is None:
                copier.pump(0.1)
                if self._kill_at is not None and time.monotonic() >= self._kill_at:
                    # mpirun did not end in time: a last resort (ranks it left behind stay).
                    signal_kill(self._proc.pid, signal.SIGKILL)
                    self._kill_at = None
        copier.drain(timeout=5.0)
        code = self._proc.returncode
        if code == 0:
            return 0
        if self._signal is not None:
            return 128 + self._signal
        if scanner.failure is not None:
            line, status = describe_exit(*scanner.failure)
            self._say(line)
            return status
        status = 128 - code if code < 0 else code
        self._say(f"skyringrun: mpirun exited with code {status}")
        return status
