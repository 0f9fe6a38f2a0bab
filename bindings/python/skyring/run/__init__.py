"""skyringrun, the launcher of skyring jobs (also `python -m skyring.run`).

    skyringrun -np 4 --clouds aws:2,gcp:2 python3 train.py --lr 0.1

Starts the ranks with Open MPI's mpirun when it is on PATH, otherwise as local processes
with torchrun-style variables; passes every SKYRING_* variable to every rank; ends the job
when a rank fails, exiting with that rank's code. Options: skyringrun --help, and
docs/python.md, "Launching: skyringrun".

main() is the console script's entry point. The launcher uses only the standard library:
the ranks need skyring._core, the launcher does not (its tests run without it).
"""

import os
import sys
from typing import Optional, Sequence

from .local import run_local
from .mpi import MpiJob, find_open_mpi
from .options import USAGE, LaunchOptions, UsageError, parse_args

__all__ = ["main", "LaunchOptions", "UsageError", "parse_args"]


def _usage_error(message: str) -> int:
    print(f"skyringrun: {message}", file=sys.stderr)
    print(USAGE, file=sys.stderr, end="")
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs skyringrun with `argv` (default: sys.argv[1:]); returns the exit status: 0, the
    failed rank's code (128 + S for a signal S), or 2 for a bad command line."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(args)
    except UsageError as e:
        return _usage_error(str(e))
    if opts.help:
        print(USAGE, end="")
        return 0
    environ = dict(os.environ)
    try:
        if opts.launcher == "local":
            return run_local(opts, environ)
        mpirun = find_open_mpi()
        if mpirun is None:
            if opts.launcher == "mpi":
                return _usage_error("--launcher mpi: no Open MPI mpirun on PATH")
            if opts.verbose:
                print("skyringrun: no Open MPI mpirun on PATH: local launcher", file=sys.stderr)
            return run_local(opts, environ)
        return MpiJob(opts, environ, mpirun).run()
    except UsageError as e:
        return _usage_error(str(e))
    except KeyboardInterrupt:  # before the ranks started (after, signals are forwarded)
        return 130
