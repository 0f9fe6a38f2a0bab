"""skyringrun's command line: parsed into one LaunchOptions, or a UsageError (exit 2).

Pure functions, no side effects beyond reading a --hostfile, so they are tested without
starting anything. The parser is hand-written rather than argparse: the command after the
options is taken verbatim from the first argument that is not an option (argparse's
REMAINDER misreads commands whose own arguments look like ours, such as `-n`).
"""

import dataclasses
import re
import shlex
from typing import Dict, List, Optional, Sequence, Tuple

USAGE = """\
usage: skyringrun [-np N] [-H HOST[:SLOTS],... | --hostfile FILE] [--clouds CLOUD:N,...]
                  [--launcher auto|mpi|local] [--no-mpi] [-x NAME[=VALUE]]...
                  [--prefix-output] [--kill-grace SECONDS] [--mpi-args ARGS] [--verbose]
                  [--] COMMAND [ARG...]

Starts COMMAND as N ranks of one skyring job: with mpirun (Open MPI) when it is on PATH,
otherwise as local processes given torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every SKYRING_* variable of this environment
reaches every rank. A rank that fails ends the job with its exit code.

options:
  -np N, -n N, --num-proc N   number of ranks (default: the sum of --clouds, else of the
                              hosts' slots)
  -H, --hosts HOST[:SLOTS],...
                              hosts and their slots (SLOTS defaults to 1)
  --hostfile FILE             one host per line, as `host slots=N` (Open MPI, Horovod)
  --clouds CLOUD:N,...        the first N ranks get SKYRING_CLOUD=CLOUD, the next ones the
                              next cloud; the counts must add up to -np
  --launcher auto|mpi|local   auto (default): mpirun when it is Open MPI's and on PATH
  --no-mpi                    same as --launcher local
  -x NAME[=VALUE]             also pass NAME (with this value, or this environment's) to
                              every rank; repeatable (PYTHONPATH, say)
  --prefix-output             prefix each line of a rank's output with [RANK] (under mpirun:
                              Open MPI's --tag-output, [JOB,RANK]<stream>:)
  --kill-grace SECONDS        after a failure or a signal, how long ranks get between
                              SIGTERM and SIGKILL (default 5; local launcher)
  --mpi-args ARGS             more mpirun options, split as a shell would; placed before
                              the first app context (so not per-rank -x: use -x above)
  -v, --verbose               print the plan (mpirun's command line, or each rank's
                              variables) to stderr
  -h, --help                  print this message and exit
"""

LAUNCHERS = ("auto", "mpi", "local")


class UsageError(Exception):
    """Bad command line; main() prints it with the usage and exits 2."""


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    slots: int


@dataclasses.dataclass
class LaunchOptions:
    np: int
    command: List[str]
    hosts: List[Host] = dataclasses.field(default_factory=list)
    hosts_arg: Optional[str] = None  # -H as given: passed to mpirun unchanged
    hostfile: Optional[str] = None
    clouds: List[Tuple[str, int]] = dataclasses.field(default_factory=list)
    launcher: str = "auto"
    extra_env: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)
    prefix_output: bool = False
    kill_grace: float = 5.0
    mpi_args: List[str] = dataclasses.field(default_factory=list)
    verbose: bool = False
    help: bool = False

    def rank_clouds(self) -> List[Optional[str]]:
        """SKYRING_CLOUD of each rank in rank order (None: left as the environment has it)."""
        if not self.clouds:
            return [None] * self.np
        return [cloud for cloud, count in self.clouds for _ in range(count)]

    def total_slots(self) -> Optional[int]:
        return sum(h.slots for h in self.hosts) if self.hosts else None


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected a positive integer, got '{text}'") from None
    if value < 1:
        raise UsageError(f"{what}: expected a positive integer, got {value}")
    return value


def parse_hosts(text: str) -> List[Host]:
    """`-H a:2,b:2,c` -> hosts; a host without slots has one (as in Open MPI)."""
    hosts = []
    for item in text.split(","):
        name, sep, slots = item.strip().partition(":")
        if not name:
            raise UsageError(f"-H '{text}': empty host name")
        hosts.append(Host(name, _positive_int(slots, f"-H {item}: slots") if sep else 1))
    return hosts


def parse_hostfile_text(text: str, path: str = "hostfile") -> List[Host]:
    """Lines `host slots=N` (Open MPI, Horovod); `host` alone has one slot; `#` comments.
    `max_slots=N` is accepted and ignored (it bounds oversubscription, which we decide)."""
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        slots = 1
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if sep and key in ("slots", "max_slots", "max-slots"):
                if key == "slots":
                    slots = _positive_int(value, f"{path}:{number}: slots")
            else:
                raise UsageError(f"{path}:{number}: expected 'host slots=N', got '{line.strip()}'")
        hosts.append(Host(words[0], slots))
    if not hosts:
        raise UsageError(f"{path}: names no host")
    return hosts


def parse_clouds(text: str) -> List[Tuple[str, int]]:
    """`aws:2,gcp:2` -> [("aws", 2), ("gcp", 2)], in rank order."""
    clouds = []
    for item in text.split(","):
        name, sep, count = item.strip().partition(":")
        if not name or not sep:
            raise UsageError(f"--clouds '{text}': expected CLOUD:N,... (such as aws:2,gcp:2)")
        clouds.append((name, _positive_int(count, f"--clouds {item}: count")))
    return clouds


def _parse_env_item(text: str) -> Tuple[str, Optional[str]]:
    name, sep, value = text.partition("=")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"-x '{text}': expected NAME or NAME=VALUE")
    return name, (value if sep else None)


# Options that take a value: spelling -> destination.
_VALUED = {
    "-np": "np", "--np": "np", "-n": "np", "--num-proc": "np",
    "-H": "hosts", "--hosts": "hosts", "--host": "hosts",
    "--hostfile": "hostfile", "-hostfile": "hostfile",
    "--clouds": "clouds",
    "--launcher": "launcher",
    "-x": "env",
    "--kill-grace": "kill_grace",
    "--mpi-args": "mpi_args",
}  # fmt: skip
_FLAGS = {
    "--no-mpi": "no_mpi",
    "--prefix-output": "prefix_output",
    "-v": "verbose", "--verbose": "verbose",
    "-h": "help", "--help": "help",
}  # fmt: skip


def parse_args(argv: Sequence[str]) -> LaunchOptions:
    """Parses skyringrun's arguments (without the program name). Reads --hostfile."""
    values: Dict[str, str] = {}
    env: Dict[str, Optional[str]] = {}
    flags = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=")
        if name in _VALUED:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"{arg} needs a value")
            dest = _VALUED[name]
            if dest == "env":
                key, val = _parse_env_item(value)
                env[key] = val
            elif dest in values:
                raise UsageError(f"{name} given twice")
            else:
                values[dest] = value
        elif arg in _FLAGS:
            flags.add(_FLAGS[arg])
        else:
            raise UsageError(f"unknown option {arg}")
        i += 1
    command = list(argv[i:])

    if "help" in flags:
        return LaunchOptions(np=1, command=command, help=True)
    if not command:
        raise UsageError("missing the command to run")

    opts = LaunchOptions(np=0, command=command, extra_env=env)
    opts.verbose = "verbose" in flags
    opts.prefix_output = "prefix_output" in flags
    if "hosts" in values and "hostfile" in values:
        raise UsageError("give -H or --hostfile, not both")
    if "hosts" in values:
        opts.hosts_arg = values["hosts"]
        opts.hosts = parse_hosts(values["hosts"])
    if "hostfile" in values:
        opts.hostfile = values["hostfile"]
        try:
            with open(opts.hostfile, encoding="utf-8") as f:
                opts.hosts = parse_hostfile_text(f.read(), opts.hostfile)
        except OSError as e:
            raise UsageError(f"--hostfile {opts.hostfile}: {e.strerror}") from None
    if "clouds" in values:
        opts.clouds = parse_clouds(values["clouds"])

    launcher = values.get("launcher", "auto")
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher}: expected one of {', '.join(LAUNCHERS)}")
    if "no_mpi" in flags:
        if launcher == "mpi":
            raise UsageError("--no-mpi contradicts --launcher mpi")
        launcher = "local"
    opts.launcher = launcher

    if "kill_grace" in values:
        try:
            opts.kill_grace = float(values["kill_grace"])
        except ValueError:
            opts.kill_grace = -1.0
        if not 0 <= opts.kill_grace <= 3600:
            raise UsageError(f"--kill-grace {values['kill_grace']}: expected 0 to 3600 seconds")
    if "mpi_args" in values:
        try:
            opts.mpi_args = shlex.split(values["mpi_args"])
        except ValueError as e:
            raise UsageError(f"--mpi-args: {e}") from None

    cloud_ranks = sum(count for _, count in opts.clouds)
    if "np" in values:
        opts.np = _positive_int(values["np"], "-np")
        if opts.clouds and cloud_ranks != opts.np:
            raise UsageError(
                f"--clouds {values['clouds']} adds up to {cloud_ranks} ranks, but -np is {opts.np}"
            )
    elif opts.clouds:
        opts.np = cloud_ranks
    elif opts.hosts:
        opts.np = opts.total_slots() or 0
    else:
        raise UsageError("how many ranks? give -np N (or --clouds, or hosts with slots)")
    return opts
