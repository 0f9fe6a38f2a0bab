"""The local launcher: the ranks as child processes of skyringrun on this machine, told who
they are with torchrun's variables, which skyring's Config reads (docs/configuration.md,
"Launcher variables"); rank 0 hosts the bootstrap store at MASTER_ADDR:MASTER_PORT.

Ownership: a LocalJob owns its children. Each runs in its own session (so that a signal,
failure or Ctrl-C is delivered once, by us, to the rank and whatever it started) and gets
SIGKILL from the kernel if the launcher itself dies. Threads: one waiter per rank reports
exits in the order they happen, so the rank blamed is the first to fail, not the first
polled; everything else runs on the main thread.
"""

import queue
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Set, TextIO

from .options import LaunchOptions, UsageError
from .procs import (
    LineCopier,
    SignalForwarder,
    describe_exit,
    die_with_parent,
    signal_kill,
)

# Variables by which Config recognises a launch (config.cc, kLaunchVariables). An outer
# mpirun's (skyringrun started inside an MPI job) would take precedence over ours in every
# rank, so they are removed from the ranks' environment.
_OUTER_LAUNCH_VARIABLES = (
    "OMPI_MCA_ess_base_jobid",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMIX_NAMESPACE",
    "PMIX_RANK",
    "PMI_RANK",
    "PMI_SIZE",
    "TORCHELASTIC_RUN_ID",
)

MASTER_ADDR = "127.0.0.1"


def is_local_host(name: str) -> bool:
    here = socket.gethostname()
    return name in ("localhost", "127.0.0.1", "::1", here, here.split(".")[0], socket.getfqdn())


def check_hosts(opts: LaunchOptions) -> None:
    """The local launcher starts ranks on this machine only: several hosts, or one that is
    not this one, are an error rather than a job silently run elsewhere than asked."""
    if len(opts.hosts) > 1:
        raise UsageError(
            f"the local launcher starts ranks on this machine only, but {len(opts.hosts)} "
            "hosts were given: install Open MPI (mpirun) to launch across hosts"
        )
    if opts.hosts and not is_local_host(opts.hosts[0].name):
        raise UsageError(
            f"the local launcher starts ranks on this machine only, not on "
            f"'{opts.hosts[0].name}': install Open MPI (mpirun) to launch on other hosts"
        )


def free_port() -> int:
    """A port free on MASTER_ADDR now. Another program may take it before rank 0 listens;
    skyring then fails the join naming MASTER_PORT, and a new launch picks another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((MASTER_ADDR, 0))
        return s.getsockname()[1]


def rank_environments(
    opts: LaunchOptions, environ: Mapping[str, str], port: int, job_id: str, job_token: str
) -> List[Dict[str, str]]:
    """Each rank's environment: ours, less an outer launch's identity, plus the torchrun
    variables, the job's identity and token (unless set by the user: every rank then shares
    theirs) and the rank's SKYRING_CLOUD under --clouds."""
    base = {k: v for k, v in environ.items() if k not in _OUTER_LAUNCH_VARIABLES}
    for name, value in opts.extra_env.items():
        if value is not None:
            base[name] = value
    base.setdefault("SKYRING_JOB_ID", job_id)
    base.setdefault("SKYRING_JOB_TOKEN", job_token)
    base.update(
        WORLD_SIZE=str(opts.np),
        LOCAL_WORLD_SIZE=str(opts.np),
        MASTER_ADDR=MASTER_ADDR,
        MASTER_PORT=str(port),
    )
    envs = []
    for rank, cloud in enumerate(opts.rank_clouds()):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        if cloud is not None:
            env["SKYRING_CLOUD"] = cloud
        envs.append(env)
    return envs


class LocalJob:
    def __init__(self, opts: LaunchOptions, environ: Mapping[str, str], err: TextIO = sys.stderr):
        check_hosts(opts)
        self._opts = opts
        self._err = err
        port = free_port()
        # A fresh identity per launch: two launches that meet on one port fail their join
        # instead of mixing, and skyring skips its wait for a quiet store (configuration.md).
        self._envs = rank_environments(
            opts, environ, port, f"skyringrun-{secrets.token_hex(8)}", secrets.token_hex(24)
        )
        self._procs: List[subprocess.Popen] = []
        self._exits: "queue.Queue[tuple]" = queue.Queue()
        self._copiers: List[threading.Thread] = []
        self._signal: Optional[int] = None
        self._kill_at: Optional[float] = None

    def _say(self, line: str) -> None:
        try:
            print(line, file=self._err, flush=True)
        except RuntimeError:
            pass  # a signal handler interrupted another print (reentrant call): skip it

    def _stop(self, ranks: Set[int], sig: int) -> None:
        for rank in ranks:
            if rank < len(self._procs):
                signal_kill(self._procs[rank].pid, sig)

    def _on_signal(self, sig: int) -> None:
        live = {r for r, p in enumerate(self._procs) if p.returncode is None}
        if self._signal is None:
            self._signal = sig
            self._say(f"skyringrun: got signal {sig}; passing it to the ranks")
            self._stop(live, sig)
            self._kill_at = time.monotonic() + self._opts.kill_grace
        else:  # a second Ctrl-C: no more patience
            self._stop(live, signal.SIGKILL)

    def _start(self, rank: int, env: Dict[str, str]) -> None:
        pipe = subprocess.PIPE if self._opts.prefix_output else None
        proc = subprocess.Popen(
            self._opts.command,
            env=env,
            stdin=None if rank == 0 else subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        self._procs.append(proc)
        if self._opts.verbose:
            cloud = env.get("SKYRING_CLOUD", "(unset)")
            self._say(f"skyringrun: rank {rank} pid {proc.pid} SKYRING_CLOUD={cloud}")

    def _watch(self) -> None:
        """Starts the threads, only once every rank is forked: preexec_fn runs in the child
        between fork and exec, where a lock held by one of our threads would never be freed."""
        for rank, proc in enumerate(self._procs):
            waiter = threading.Thread(
                target=lambda r=rank, p=proc: self._exits.put((r, p.wait())), daemon=True
            )
            waiter.start()
            if self._opts.prefix_output:
                tag = f"[{rank}] ".encode()
                self._copiers += [
                    LineCopier(proc.stdout, sys.stdout.buffer, _STDOUT_LOCK, tag),
                    LineCopier(proc.stderr, sys.stderr.buffer, _STDERR_LOCK, tag),
                ]
        for copier in self._copiers:
            copier.start()

    def run(self) -> int:
        opts = self._opts
        if opts.verbose:
            e = self._envs[0]
            self._say(
                f"skyringrun: local launcher, {opts.np} ranks of {shlex.join(opts.command)}: "
                f"MASTER_ADDR={e['MASTER_ADDR']} MASTER_PORT={e['MASTER_PORT']} "
                f"SKYRING_JOB_ID={e['SKYRING_JOB_ID']}"
            )
        failure = None
        with SignalForwarder(self._on_signal):
            for rank, env in enumerate(self._envs):
                if self._signal is not None:
                    break  # interrupted while starting: start no more
                try:
                    self._start(rank, env)
                except OSError as e:
                    self._say(f"skyringrun: cannot start {opts.command[0]}: {e.strerror}")
                    failure = (rank, 127 if isinstance(e, FileNotFoundError) else 126)
                    self._stop(set(range(rank)), signal.SIGTERM)
                    self._kill_at = time.monotonic() + opts.kill_grace
                    break
            self._watch()
            remaining = set(range(len(self._procs)))
            while remaining:
                try:
                    rank, code = self._exits.get(timeout=0.1)
                except queue.Empty:
                    if self._kill_at is not None and time.monotonic() >= self._kill_at:
                        self._stop(remaining, signal.SIGKILL)
                        self._kill_at = None
                    continue
                remaining.discard(rank)
                if code != 0 and failure is None and self._signal is None:
                    failure = (rank, code)
                    line, _ = describe_exit(rank, code)
                    self._say(line)
                    # The failed rank's group too: whatever it started dies with the job.
                    self._stop(remaining | {rank}, signal.SIGTERM)
                    self._kill_at = time.monotonic() + opts.kill_grace
        for copier in self._copiers:
            copier.join(timeout=2.0)  # a grandchild may hold the pipe open; do not wait for it
        if failure is not None:
            return describe_exit(*failure)[1]
        if self._signal is not None and any(p.returncode != 0 for p in self._procs):
            return 128 + self._signal
        return 0


_STDOUT_LOCK = threading.Lock()
_STDERR_LOCK = threading.Lock()


def run_local(opts: LaunchOptions, environ: Mapping[str, str], err: TextIO = sys.stderr) -> int:
    return LocalJob(opts, environ, err).run()
