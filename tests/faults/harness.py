"""Starts fault_rank processes (torchrun-style or under mpirun), watches them against a hard
deadline, collects what each one printed and when it exited, and holds the assertions that
the cases in faults.py share.

Every process the harness starts is in its own session (process group), so a case can kill
everything it started and nothing else; /dev/shm is checked for segments of those pids
only, because other tests may run beside this one.
"""

import os
import re
import signal
import socket
import subprocess
import time

# The library's timeouts for most cases (ms), and how much later than a timeout an error
# may come: the diagnosis runs inside the timeout, so the slack only covers scheduling on
# a loaded 2-core machine.
TIMEOUT_MS = 3000
INIT_TIMEOUT_MS = 5000
SLACK_MS = 3000
# A process must exit this soon after it printed its error (the Runtime is destroyed
# between the two).
EXIT_AFTER_ERROR_MS = 2000

POLL_S = 0.01
LINE = re.compile(r"^fault_rank: rank (\d+) (.*)$")
# Phrases that blame a rank; a survivor must never blame one that is not the victim.
BLAME = re.compile(r"\brank (\d+) (died|did not take part|did not contribute)")
SHM_SEGMENT = re.compile(r"^skyring-(\d+)-")


class CaseFailure(Exception):
    """An assertion of the contract failed; the message says which and why."""


class Skip(Exception):
    """The case cannot run here (e.g. no mpirun); ctest reports it as skipped."""


def now_ms():
    return int(time.time() * 1000)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environment():
    """The runner's environment without anything that would change how a rank starts."""
    drop = ("SKYRING_", "OMPI_", "PMIX_", "PMI_", "TORCHELASTIC_")
    names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in names}
    if os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def proc_state(pid):
    """'R', 'S', 'T' (stopped), 'Z' (zombie)... or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Outcome:
    """What one process did: its lines, its error, when it exited."""

    def __init__(self, label, rank):
        self.label = label
        self.rank = rank
        self.pid = None
        self.start_ms = None
        self.inject = None  # (kind, phase, ms)
        self.checked_ms = None
        self.ok = False
        self.error = None  # (ms, message)
        self.wrong = None  # call index
        self.foreign = None  # (ms, message)
        self.exit_ms = None
        self.code = None  # exit status (negative: signal); None under mpirun
        self.stopped = False
        self.hung = False
        self.lines = []
        self.stderr = ""

    def take(self, rest):
        self.lines.append(rest)
        if m := re.match(r"pid (\d+) start at (\d+)", rest):
            self.pid, self.start_ms = int(m[1]), int(m[2])
        elif m := re.match(r"injecting (\w+) at (\S+) at (\d+)", rest):
            self.inject = (m[1], m[2], int(m[3]))
        elif m := re.match(r"checked \d+ calls at (\d+)", rest):
            self.checked_ms = int(m[1])
        elif rest == "ok":
            self.ok = True
        elif m := re.match(r"error at (\d+): (.*)", rest, re.S):
            self.error = (int(m[1]), m[2])
        elif m := re.match(r"WRONG result in call (\d+)", rest):
            self.wrong = int(m[1])
        elif m := re.match(r"foreign exception at (\d+): (.*)", rest, re.S):
            self.foreign = (int(m[1]), m[2])

    def describe(self):
        out = [f"--- {self.label} (rank {self.rank}, pid {self.pid}, exit code {self.code}"
               f"{', STOPPED' if self.stopped else ''}{', HUNG' if self.hung else ''})"]
        out += ["  " + line for line in self.lines]
        if self.stderr.strip():
            out += ["  stderr: " + line for line in self.stderr.strip().splitlines()[-15:]]
        return "\n".join(out)


class _Process:
    def __init__(self, popen, outcome, out_path, err_path):
        self.popen, self.outcome, self.out_path, self.err_path = popen, outcome, out_path, err_path


class _Mpirun:
    def __init__(self, popen, outcomes, out_path, err_path):
        self.popen, self.outcomes, self.out_path, self.err_path = popen, outcomes, out_path, err_path


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Run:
    """The processes of one case. Use as a context manager: leaving it kills whatever is
    left (stopped victims included) and checks /dev/shm for segments of its pids."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.processes = []
        self.mpiruns = []
        self.pids = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill_all()
        return False

    def _files(self, label):
        self.ctx.files += 1  # numbered across the case's runs, so no run overwrites another's
        base = os.path.join(self.ctx.workdir, f"{self.ctx.files:03d}-{label}")
        return base + ".out", base + ".err"

    def start(self, rank, world, port, env=None, args=(), label=None, nofile=None):
        """One rank with torchrun-style variables (RANK, WORLD_SIZE, LOCAL_*, MASTER_*)."""
        full = clean_environment()
        full.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                    LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        full.update(env or {})
        label = label or f"rank{rank}"
        out_path, err_path = self._files(label)
        argv = [self.ctx.prog, *map(str, args)]
        if nofile is not None:
            # A soft limit on open files, set by a shell that then execs the rank (same
            # pid); not preexec_fn, which is unsafe while attack threads run.
            argv = ["/bin/sh", "-c", f'ulimit -Sn {int(nofile)} && exec "$0" "$@"', *argv]
        with open(out_path, "w") as out, open(err_path, "w") as err:
            popen = subprocess.Popen(argv, env=full, stdout=out, stderr=err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids.add(popen.pid)
        outcome = Outcome(label, rank)
        outcome.pid = popen.pid
        self.processes.append(_Process(popen, outcome, out_path, err_path))
        return outcome

    def start_job(self, world, env=None, args=(), per_rank=None, port=None, label="", nofile=None):
        """world ranks on one port; per_rank(r) may add env for rank r. Returns outcomes."""
        port = port or free_port()
        outcomes = []
        for r in range(world):
            e = dict(env or {})
            e.update((per_rank or (lambda _: {}))(r))
            outcomes.append(self.start(r, world, port, e, args, f"{label}rank{r}", nofile))
        return outcomes

    def start_mpirun(self, contexts, env=None, leading=(), args=()):
        """One mpirun, MPMD: contexts is a list of (np, {VAR: value}) turned into
        `-np N -x VAR=value prog args` joined by ':' (so each -x applies to its own app
        context only). leading goes before the first context. mpirun is told not to end
        the job itself when a rank fails, so the library's own detection is what we see.
        Returns the outcomes by global rank."""
        if not self.ctx.mpirun:
            raise Skip("no mpirun")
        cmd = [self.ctx.mpirun, "--oversubscribe", "--mca", "orte_abort_on_non_zero_status", "0",
               "--mca", "orte_enable_recovery", "1", *leading]
        for i, (np_, xs) in enumerate(contexts):
            if i:
                cmd.append(":")
            cmd += ["-np", str(np_)]
            for k, v in xs.items():
                cmd += ["-x", f"{k}={v}"]
            cmd += [self.ctx.prog, *map(str, args)]
        full = clean_environment()
        full.update(env or {})
        out_path, err_path = self._files("mpirun")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            popen = subprocess.Popen(cmd, env=full, stdout=out, stderr=err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids.add(popen.pid)
        world = sum(np_ for np_, _ in contexts)
        outcomes = {r: Outcome(f"mpirun rank{r}", r) for r in range(world)}
        self.mpiruns.append(_Mpirun(popen, outcomes, out_path, err_path))
        return [outcomes[r] for r in range(world)]

    def _parse_mpirun(self, m):
        for line in _read(m.out_path).splitlines():
            if (mm := LINE.match(line)) and int(mm[1]) in m.outcomes:
                o = m.outcomes[int(mm[1])]
                if mm[2] not in o.lines:
                    o.take(mm[2])
                if o.pid:
                    self.pids.add(o.pid)

    def wait(self, deadline_s):
        """Waits until every process has exited or stopped itself, at most deadline_s;
        processes still running then are marked hung and killed."""
        end = time.monotonic() + deadline_s
        while True:
            busy = False
            for p in self.processes:
                o = p.outcome
                if o.exit_ms is not None or o.stopped:
                    continue
                code = p.popen.poll()
                if code is not None:
                    o.exit_ms, o.code = now_ms(), code
                elif proc_state(p.popen.pid) in ("T", "t"):
                    o.stopped = True
                else:
                    busy = True
            for m in self.mpiruns:
                self._parse_mpirun(m)
                done = m.popen.poll() is not None
                for o in m.outcomes.values():
                    if o.exit_ms is not None or o.stopped:
                        continue
                    state = proc_state(o.pid) if o.pid else None
                    if o.pid and state in (None, "Z"):
                        o.exit_ms = now_ms()
                    elif state in ("T", "t"):
                        o.stopped = True
                    elif not done:
                        busy = True
            if not busy:
                break
            if time.monotonic() > end:
                for p in self.processes:
                    if p.outcome.exit_ms is None and not p.outcome.stopped:
                        p.outcome.hung = True
                for m in self.mpiruns:
                    for o in m.outcomes.values():
                        if o.exit_ms is None and not o.stopped:
                            o.hung = True
                break
            time.sleep(POLL_S)
        self.kill_all()
        for p in self.processes:
            for line in _read(p.out_path).splitlines():
                if mm := LINE.match(line):
                    p.outcome.take(mm[2])
            p.outcome.stderr = _read(p.err_path)
        for m in self.mpiruns:
            self._parse_mpirun(m)
            err = _read(m.err_path)
            for o in m.outcomes.values():
                o.stderr = err
        return self.outcomes()

    def wait_for_line(self, outcome, pattern, timeout_s):
        """True once outcome's process (torchrun-style) printed a line matching pattern."""
        path = next(p.out_path for p in self.processes if p.outcome is outcome)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if any((m := LINE.match(line)) and re.search(pattern, m[2])
                   for line in _read(path).splitlines()):
                return True
            time.sleep(POLL_S)
        return False

    def outcomes(self):
        out = [p.outcome for p in self.processes]
        for m in self.mpiruns:
            out += list(m.outcomes.values())
        return out

    def kill_all(self):
        """SIGKILLs everything of this case still there (stopped victims too) and reaps."""
        for p in self.processes:
            if p.popen.poll() is None:
                try:
                    os.killpg(p.popen.pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for m in self.mpiruns:
            self._parse_mpirun(m)
            for o in m.outcomes.values():
                if o.pid and proc_state(o.pid) not in (None, "Z"):
                    try:
                        os.kill(o.pid, signal.SIGKILL)
                    except OSError:
                        pass
            if m.popen.poll() is None:
                try:
                    m.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(m.popen.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    m.popen.wait(timeout=10)

    def leftover_segments(self):
        """/dev/shm/skyring-<pid>-* of any pid this case started."""
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            return []
        return [n for n in names if (m := SHM_SEGMENT.match(n)) and int(m[1]) in self.pids]

    def report(self):
        return "\n".join(o.describe() for o in self.outcomes())


# ---- assertions -------------------------------------------------------------------------


def _fail(what, outcomes=()):
    raise CaseFailure(what + ("\n" + "\n".join(o.describe() for o in outcomes) if outcomes else ""))


def expect_no_hang(outcomes):
    hung = [o for o in outcomes if o.hung]
    if hung:
        _fail("hang: " + ", ".join(o.label for o in hung) + " still ran at the deadline", hung)


def expect_no_wrong(outcomes):
    bad = [o for o in outcomes if o.wrong is not None]
    if bad:
        _fail("WRONG result returned by " + ", ".join(o.label for o in bad), bad)


def expect_clean_end(o):
    """o ended by itself: ok (exit 0) or a skyring::Error (exit 1), not a crash."""
    if o.hung:
        _fail(f"{o.label} hung", [o])
    if o.foreign:
        _fail(f"{o.label} threw something that is not a skyring::Error", [o])
    if not o.ok and not o.error:
        _fail(f"{o.label} ended without 'ok' or an error line (crash?)", [o])
    if o.code is not None and o.code not in (0, 1):
        _fail(f"{o.label} exited with {o.code}", [o])


def expect_ok(o):
    expect_clean_end(o)
    if not o.ok or o.error:
        _fail(f"{o.label} should have succeeded", [o])


def expect_all_ok(outcomes):
    expect_no_hang(outcomes)
    expect_no_wrong(outcomes)
    for o in outcomes:
        expect_ok(o)


def expect_exit_soon_after_error(o):
    if o.exit_ms is None:
        _fail(f"{o.label}: no exit time", [o])
    late = o.exit_ms - o.error[0]
    if late > EXIT_AFTER_ERROR_MS:
        _fail(f"{o.label} exited {late} ms after its error (limit {EXIT_AFTER_ERROR_MS} ms): "
              "shutdown after a failure is slow", [o])


def expect_failed(o, since_ms, within_ms):
    """o failed with a skyring::Error within within_ms (+ slack) of since_ms and exited
    soon after."""
    expect_clean_end(o)
    if o.ok or not o.error:
        _fail(f"{o.label} should have failed", [o])
    took = o.error[0] - since_ms
    if took > within_ms + SLACK_MS:
        _fail(f"{o.label} failed {took} ms after the fault (limit {within_ms} + {SLACK_MS} ms)",
              [o])
    expect_exit_soon_after_error(o)


def blamed_others(text, victim):
    return sorted({int(m[1]) for m in BLAME.finditer(text)} - {victim})


def expect_no_blame_of_others(o, victim):
    others = blamed_others(o.error[1] if o.error else "", victim) + blamed_others(o.stderr, victim)
    if others:
        _fail(f"{o.label} blames rank(s) {others}, not the victim {victim}", [o])


def expect_fail_naming(o, victim, since_ms, within_ms):
    expect_failed(o, since_ms, within_ms)
    if not re.search(rf"\brank {victim}\b", o.error[1]):
        _fail(f"{o.label}'s error does not name 'rank {victim}'", [o])
    expect_no_blame_of_others(o, victim)


def expect_all_fail_naming(survivors, victim, since_ms, within_ms):
    expect_no_hang(survivors)
    expect_no_wrong(survivors)
    for o in survivors:
        expect_fail_naming(o, victim, since_ms, within_ms)


def strip_prefix(message):
    """The message without skyring's "skyring [rank R, op, peer P]: " context prefix."""
    return re.sub(r"^skyring \[[^\]]*\]:\s*", "", message)


def ranks_listed(message):
    """Every rank number the message lists after 'rank' or 'ranks' (lists like
    '0, 1 and 3' and ranges like '0-2' included), outside the context prefix."""
    found = set()
    for m in re.finditer(r"\branks?\s+((?:\d+(?:\s*(?:,|and|-|\.\.|to)\s*|\s+))*\d+)",
                         strip_prefix(message)):
        for a, b in re.findall(r"(\d+)(?:\s*(?:-|\.\.|to)\s*(\d+))?", m[1]):
            found.update(range(int(a), int(b or a) + 1))
    return found


def expect_setting_error(o, variable, differing, since_ms, within_ms=INIT_TIMEOUT_MS):
    """o failed at init naming variable, 'differs between ranks', the ranks that differ
    (differing: a set, or a list of sets of which one must be named) and 'mpirun -x'."""
    expect_failed(o, since_ms, within_ms)
    msg = o.error[1]
    for must in (variable, "differs between ranks", "mpirun -x"):
        if must not in msg:
            _fail(f"{o.label}'s error lacks '{must}'", [o])
    options = differing if isinstance(differing, list) else [differing]
    listed = ranks_listed(msg)
    if not any(set(d) <= listed for d in options):
        _fail(f"{o.label}'s error names ranks {sorted(listed)}, not the differing "
              f"{' or '.join(str(sorted(d)) for d in options)}", [o])
