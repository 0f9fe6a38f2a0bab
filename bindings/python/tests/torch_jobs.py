"""Starts a small skyring job of local processes from inside a test, with the torchrun-style
variables skyring reads, apart from any mpirun job the test runs in (its variables are
removed). For the tests that need their own world: a rank that dies, ranks in two clouds."""

import os
import socket
import subprocess
import sys


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outer_rank():
    """This process's rank in the mpirun job the tests run in (0 outside one)."""
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))


def run_job(script, size, env_of_rank=lambda r: {}, timeout=120, **env):
    """Runs script (a file) as ranks 0..size-1; returns [(exit code, output)] by rank."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SKYRING_"))}
    base.update(WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(_free_port()), SKYRING_INIT_TIMEOUT_MS="30000",
                SKYRING_JOB_ID=f"test-{os.getpid()}-{_free_port()}")
    base.update(env)
    ranks = [subprocess.Popen([sys.executable, str(script)],
                              env=dict(base, RANK=str(r), LOCAL_RANK=str(r), **env_of_rank(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(size)]
    results = []
    try:
        for p in ranks:
            results.append((None, p.communicate(timeout=timeout)[0]))
    finally:
        for p in ranks:
            p.kill()
    return [(p.returncode, out) for p, (_, out) in zip(ranks, results)]
