#!/usr/bin/python3
"""Fault-injection cases for skyring (issue 11): every case starts real fault_rank
processes, injects one fault, and checks the contract: survivors fail with an error that
names the right global rank (or setting) within their timeout and exit soon after, no rank
ever returns a wrong result, nothing hangs, and /dev/shm keeps nothing of ours.

  faults.py --list                 names of all cases
  faults.py CASE [CASE...]         runs cases (shell patterns allowed: 'fault.die.*')
  options: --prog PATH (fault_rank; default $FAULT_RANK), --mpirun PATH (default: on PATH)

Exit status: 0 all passed, 1 a case failed, 77 skipped (e.g. mpirun missing). See
README.md for what each case checks.
"""

import argparse
import fnmatch
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
from attacks import wait_listening  # noqa: E402
from cases_store import STORE_CASES  # noqa: E402

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CASES = {}  # name -> (function(ctx), deadline of the whole case in seconds)


def case(name, budget_s):
    def register(fn):
        CASES[name] = (fn, budget_s)
        return fn

    return register


class Context:
    def __init__(self, prog, mpirun, workdir):
        self.prog, self.mpirun, self.workdir = prog, mpirun, workdir
        self.runs = []
        self.files = 0

    def run(self):
        r = h.Run(self)
        self.runs.append(r)
        return r


def base_env(timeout_ms=h.TIMEOUT_MS, init_timeout_ms=h.INIT_TIMEOUT_MS, **extra):
    env = {"SKYRING_TIMEOUT_MS": str(timeout_ms), "SKYRING_INIT_TIMEOUT_MS": str(init_timeout_ms)}
    env.update(extra)
    return env


# ---- killed, stopped and late ranks ----------------------------------------------------

# Four ranks each. Hierarchical: clouds aws = {0, 1}, gcp = {2, 3}; the victim 3 is rank 1
# inside its cloud and inside its cross-cloud sub-group, so a message that names a rank by
# its place in a sub-group names the wrong one.
MODES = {
    "flat": lambda r: {"SKYRING_SHM": "0"},
    "shm": lambda r: {"SKYRING_SHM": "1"},
    "hier": lambda r: {"SKYRING_CLOUD": "aws" if r < 2 else "gcp"},
}
DEFAULT_VICTIM = {"flat": 2, "shm": 2, "hier": 3}
PHASES = {"init": "init", "call2": "call:2", "exit": "exit"}


def fault_settings(kind, phase):
    """(SKYRING_TIMEOUT_MS, SKYRING_INIT_TIMEOUT_MS, fault argument). A late start or
    goodbye is longer than the collectives' timeout and shorter than start-up's; a late
    collective is shorter than the collectives' timeout (the diagnosis starts at 4/5)."""
    spec = PHASES[phase]
    if kind == "late":
        if phase == "call2":
            return h.TIMEOUT_MS, h.INIT_TIMEOUT_MS, f"{spec}:1500"
        return 2000, 8000, f"{spec}:4000"
    return h.TIMEOUT_MS, h.INIT_TIMEOUT_MS, spec


def fault_budget(kind, phase):
    t, i, _ = fault_settings(kind, phase)
    return (i + t + h.SLACK_MS + h.EXIT_AFTER_ERROR_MS) / 1000 + 5


def check_fault(outcomes, kind, phase, victim, timeout_ms, init_timeout_ms):
    h.expect_no_hang(outcomes)
    v = outcomes[victim]
    survivors = [o for o in outcomes if o is not v]
    if kind == "late":
        h.expect_all_ok(outcomes)
        return
    h.expect_no_wrong(survivors)  # a killed or stopped victim's own output is ignored
    if v.inject is None:
        raise h.CaseFailure(f"the victim {v.label} never injected its fault\n{v.describe()}")
    since = v.inject[2]
    if phase == "init":
        h.expect_all_fail_naming(survivors, victim, since, init_timeout_ms)
    elif phase == "call2":
        h.expect_all_fail_naming(survivors, victim, since, timeout_ms)
    else:
        # Every result was right; the goodbye may warn about the victim but must end
        # within the start-up timeout.
        for o in survivors:
            h.expect_ok(o)
            h.expect_no_blame_of_others(o, victim)
            took = o.exit_ms - since
            if took > init_timeout_ms + h.SLACK_MS:
                raise h.CaseFailure(f"{o.label} exited {took} ms after the victim's fault at exit "
                                    f"(limit {init_timeout_ms} + {h.SLACK_MS} ms)\n{o.describe()}")


def make_fault_case(kind, phase, mode, victim):
    def run_case(ctx):
        t, i, spec = fault_settings(kind, phase)
        with ctx.run() as run:
            run.start_job(4, base_env(t, i), ["--victim", victim, f"--{kind}", spec],
                          per_rank=MODES[mode])
            outcomes = run.wait(fault_budget(kind, phase) - 3)
        check_fault(outcomes, kind, phase, victim, t, i)

    return run_case


for _kind in ("die", "stop", "late"):
    for _phase in PHASES:
        for _mode in MODES:
            case(f"fault.{_kind}.{_phase}.{_mode}", fault_budget(_kind, _phase))(
                make_fault_case(_kind, _phase, _mode, DEFAULT_VICTIM[_mode]))
        # Rank 0 hosts the bootstrap store under torchrun-style launch.
        if _kind != "late" or _phase == "init":
            case(f"fault.{_kind}.{_phase}.flat.rank0", fault_budget(_kind, _phase))(
                make_fault_case(_kind, _phase, "flat", 0))


@case("fault.die.call2.mpirun", fault_budget("die", "call2") + 10)
def die_mid_call_mpirun(ctx):
    with ctx.run() as run:
        run.start_mpirun([(4, {})], env=base_env(SKYRING_SHM="0"),
                         args=["--victim", 2, "--die", "call:2"])
        outcomes = run.wait(fault_budget("die", "call2") + 5)
    check_fault(outcomes, "die", "call2", 2, h.TIMEOUT_MS, h.INIT_TIMEOUT_MS)


# ---- settings that must agree ------------------------------------------------------------

# A valid value different from the default (and from base_env) for every setting that
# docs/configuration.md marks "same on every rank"; agree.covers_every_setting keeps the
# two in step.
DIFFERENT_VALUE = {
    "SKYRING_TIMEOUT_MS": "3500",
    "SKYRING_JOB_ID": "faults-job-b",
    "SKYRING_RING_CHUNK_BYTES": "65536",
    "SKYRING_RING_PIPELINE_DEPTH": "3",
    "SKYRING_SHM": "0",
    "SKYRING_SHM_SLOT_BYTES": "32768",
    "SKYRING_SHM_RING_BYTES": "2097152",
    "SKYRING_SHM_SINGLE_COPY_BYTES": "1048576",
    "SKYRING_SHM_CHUNK_BYTES": "65536",
    "SKYRING_ALLREDUCE": "ring",
    "SKYRING_COMPRESSION": "fp16",
    "SKYRING_COMPRESSION_LEVELS": "cloud,cross_cloud",
    "SKYRING_FUSION_THRESHOLD": "1048576",
    "SKYRING_ENGINE_REPLAY": "0",
    "SKYRING_STALL_SHUTDOWN_S": "30",
    "SKYRING_LINK_INTRA_NODE_GBPS": "400",
    "SKYRING_LINK_INTRA_NODE_LATENCY_MS": "0.002",
    "SKYRING_LINK_INTRA_CLOUD_GBPS": "100",
    "SKYRING_LINK_INTRA_CLOUD_LATENCY_MS": "0.01",
    "SKYRING_LINK_INTRA_CLOUD_DOLLARS_PER_GB": "0.01",
    "SKYRING_LINK_CROSS_CLOUD_GBPS": "5",
    "SKYRING_LINK_CROSS_CLOUD_LATENCY_MS": "50",
    "SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB": "0.12",
    # Compared as the effective value: with AGREE_TOKEN the others seal cross_cloud and
    # resolve auto to AES-256-GCM (on a CPU with AES instructions, as this one).
    "SKYRING_ENCRYPT": "none",
    "SKYRING_CIPHER": "chacha20-poly1305",
}
# Settings whose case runs with a job token (sealing needs one).
AGREE_TOKEN = {"SKYRING_ENCRYPT", "SKYRING_CIPHER"}
ODD_RANK = 1  # of 3, torchrun-style


def settings_that_must_agree():
    """The variables docs/configuration.md marks 'yes' in its 'same on every rank' column."""
    names = []
    with open(os.path.join(SOURCE_DIR, "docs", "configuration.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and cells[2] == "yes" and (m := re.match(r"`(SKYRING_\w+)`", cells[0])):
                names.append(m[1])
    return names


@case("agree.covers_every_setting", 5)
def agree_covers(ctx):
    documented = settings_that_must_agree()
    missing = sorted(set(documented) - set(DIFFERENT_VALUE))
    stale = sorted(set(DIFFERENT_VALUE) - set(documented))
    if missing or stale or not documented:
        raise h.CaseFailure(f"DIFFERENT_VALUE is out of step with docs/configuration.md: "
                            f"missing {missing}, not marked 'same on every rank' {stale}")


def check_job_id_differs(outcomes, odd, since):
    """A rank with another SKYRING_JOB_ID is another job: it is refused at the join with an
    error about the job, and the others fail at init naming it (as a setting that
    differs, or as a rank that never joined)."""
    h.expect_no_hang(outcomes)
    h.expect_no_wrong(outcomes)
    for o in outcomes:
        h.expect_failed(o, since, h.INIT_TIMEOUT_MS)
        msg = o.error[1]
        if o.rank == odd:
            if not re.search(r"job", msg, re.I):
                raise h.CaseFailure(f"{o.label}'s error does not mention the job\n{o.describe()}")
        elif not (("SKYRING_JOB_ID" in msg and "differs between ranks" in msg
                   and odd in h.ranks_listed(msg)) or re.search(rf"\brank {odd}\b", msg)):
            raise h.CaseFailure(f"{o.label}'s error names neither SKYRING_JOB_ID differing nor "
                                f"rank {odd}\n{o.describe()}")


def make_agree_case(variable):
    def run_case(ctx):
        env = base_env()
        if variable == "SKYRING_JOB_ID":
            env["SKYRING_JOB_ID"] = "faults-job-a"
        if variable in AGREE_TOKEN:
            env["SKYRING_JOB_TOKEN"] = "faults-agree-token-0123456789"
        with ctx.run() as run:
            since = h.now_ms()
            run.start_job(3, env, per_rank=lambda r: {variable: DIFFERENT_VALUE[variable]}
                          if r == ODD_RANK else {})
            outcomes = run.wait(h.INIT_TIMEOUT_MS / 1000 + 8)
        if variable == "SKYRING_JOB_ID":
            check_job_id_differs(outcomes, ODD_RANK, since)
            return
        h.expect_no_hang(outcomes)
        h.expect_no_wrong(outcomes)
        for o in outcomes:
            h.expect_setting_error(o, variable, {ODD_RANK}, since)

    return run_case


for _var in DIFFERENT_VALUE:
    case(f"agree.torchrun.{_var}", h.INIT_TIMEOUT_MS / 1000 + 12)(make_agree_case(_var))


def make_mpirun_agree_case(variable, value):
    """mpirun -np 3 prog : -np 1 -x VARIABLE=value prog: rank 3 differs."""

    def run_case(ctx):
        with ctx.run() as run:
            since = h.now_ms()
            run.start_mpirun([(3, {}), (1, {variable: value})], env=base_env())
            outcomes = run.wait(h.INIT_TIMEOUT_MS / 1000 + 12)
        h.expect_no_hang(outcomes)
        h.expect_no_wrong(outcomes)
        for o in outcomes:
            h.expect_setting_error(o, variable, {3}, since)

    return run_case


for _var in ("SKYRING_SHM", "SKYRING_ALLREDUCE", "SKYRING_COMPRESSION"):
    case(f"agree.mpirun.{_var}", h.INIT_TIMEOUT_MS / 1000 + 20)(
        make_mpirun_agree_case(_var, DIFFERENT_VALUE[_var]))


@case("agree.mpirun.issue_hang", h.INIT_TIMEOUT_MS / 1000 + 20)
def agree_mpirun_issue_hang(ctx):
    """The command of issue 11 that hung: the first -x reaches the first app context only,
    so ranks 0, 1 run without shared memory and ranks 2, 3 with it."""
    with ctx.run() as run:
        since = h.now_ms()
        run.start_mpirun([(2, {"SKYRING_CLOUD": "aws"}), (2, {"SKYRING_CLOUD": "gcp"})],
                         env=base_env(), leading=["-x", "SKYRING_SHM=0"])
        outcomes = run.wait(h.INIT_TIMEOUT_MS / 1000 + 12)
    h.expect_no_hang(outcomes)
    h.expect_no_wrong(outcomes)
    for o in outcomes:
        h.expect_setting_error(o, "SKYRING_SHM", [{0, 1}, {2, 3}], since)


# ---- who belongs to the job ----------------------------------------------------------------


@case("join.duplicate_rank", h.INIT_TIMEOUT_MS / 1000 + h.TIMEOUT_MS / 1000 + 12)
def duplicate_rank(ctx):
    """Two processes claim rank 1 of a 3-rank job: the second claim fails naming the rank;
    nobody returns a wrong result or hangs."""
    with ctx.run() as run:
        port = h.free_port()
        outcomes = run.start_job(3, base_env(), port=port)
        outcomes.append(run.start(1, 3, port, base_env(), label="duplicate-rank1"))
        outcomes = run.wait(h.INIT_TIMEOUT_MS / 1000 + h.TIMEOUT_MS / 1000 + 8)
    h.expect_no_hang(outcomes)
    h.expect_no_wrong(outcomes)
    for o in outcomes:
        h.expect_clean_end(o)
    ones = [o for o in outcomes if o.rank == 1]
    refused = [o for o in ones if o.error and "claim" in o.error[1]
               and re.search(r"\brank 1\b", o.error[1])]
    if not refused:
        raise h.CaseFailure("neither claimant of rank 1 was refused with an error naming the "
                            "claim and rank 1\n" + "\n".join(o.describe() for o in ones))
    if sum(o.ok for o in ones) > 1:
        raise h.CaseFailure("both claimants of rank 1 succeeded")


@case("join.duplicate_rank_late", 8 + 3 + 12)
def duplicate_rank_late(ctx):
    """A second process claims rank 1 after the job has joined (rank 0 keeps the store up
    by destroying its Runtime 3 s late): the claim is refused naming rank 1 and the job
    goes on undisturbed."""
    with ctx.run() as run:
        port = h.free_port()
        env = base_env(2000, 8000)
        job = run.start_job(3, env, ["--victim", 0, "--late", "exit:3000"], port=port)
        joined = all(run.wait_for_line(o, r"^checked ", 8) for o in job)
        since = h.now_ms()
        dup = run.start(1, 3, port, env, label="duplicate-rank1")
        run.wait(15)
    if not joined:
        raise h.CaseFailure("the job did not get through its collectives\n" + run.report())
    h.expect_all_ok(job)
    h.expect_no_wrong([dup])
    h.expect_failed(dup, since, 8000)
    if "claim" not in dup.error[1] or not re.search(r"\brank 1\b", dup.error[1]):
        raise h.CaseFailure(f"the late claimant's error lacks 'claim' or 'rank 1'\n"
                            f"{dup.describe()}")


TWO_JOB_REPEATS = 10
TWO_JOB_INIT_MS = 3000


@case("join.two_jobs_one_port", TWO_JOB_REPEATS * (TWO_JOB_INIT_MS + h.TIMEOUT_MS + 8000) / 1000)
def two_jobs_one_port(ctx):
    """Two 3-rank jobs started together on one MASTER_PORT, with different salts and no
    SKYRING_JOB_ID: whatever happens, no process may return a wrong (mixed) result, each
    ends with ok or a clear error, and nobody hangs."""
    for rep in range(TWO_JOB_REPEATS):
        with ctx.run() as run:
            port = h.free_port()
            env = base_env(init_timeout_ms=TWO_JOB_INIT_MS)
            order = [("a", 0), ("b", 1000)] if rep % 2 == 0 else [("b", 1000), ("a", 0)]
            for name, salt in order:
                run.start_job(3, env, ["--salt", salt], port=port, label=f"rep{rep}-job{name}-")
            outcomes = run.wait((TWO_JOB_INIT_MS + h.TIMEOUT_MS) / 1000 + 5)
        h.expect_no_hang(outcomes)
        h.expect_no_wrong(outcomes)
        for o in outcomes:
            h.expect_clean_end(o)
        oks = sorted(o.label for o in outcomes if o.ok)
        print(f"  repeat {rep}: ok {oks or 'none'}")


@case("join.two_jobs_job_id", 8 + 2 + 8)
def two_jobs_job_id(ctx):
    """Job a (SKYRING_JOB_ID=faults-a) runs on a port; job b (faults-b) starts on the same
    port while a's store is up: b's ranks fail with an error about the job, a is not
    disturbed."""
    with ctx.run() as run:
        port = h.free_port()
        env_a = base_env(2000, 8000, SKYRING_JOB_ID="faults-a")
        a = run.start_job(3, env_a, ["--victim", 0, "--late", "exit:3000"], port=port,
                          label="joba-")
        wait_listening(port, 5)
        since = h.now_ms()
        b = run.start_job(3, base_env(SKYRING_JOB_ID="faults-b"), ["--salt", 1000], port=port,
                          label="jobb-")
        outcomes = run.wait(14)
    h.expect_no_hang(outcomes)
    h.expect_no_wrong(outcomes)
    h.expect_all_ok(a)
    for o in b:
        h.expect_failed(o, since, h.INIT_TIMEOUT_MS)
    # Rank 0 of b cannot host a store on a port that is taken; its error need not be
    # about the job. The others joined a's store and must be told it is another job.
    for o in b[1:]:
        if not re.search(r"\bjob\b", o.error[1], re.I):
            raise h.CaseFailure(f"{o.label}'s error does not mention the job\n{o.describe()}")


CASES.update(STORE_CASES)


# ---- nothing left behind -----------------------------------------------------------------


@case("final.no_shm_litter", 5)
def no_shm_litter(ctx):
    """No /dev/shm/skyring-<pid>-* of a process that is gone (of this suite or any other)."""
    litter = []
    for name in os.listdir("/dev/shm"):
        if (m := h.SHM_SEGMENT.match(name)) and h.proc_state(int(m[1])) in (None, "Z"):
            litter.append(name)
    if litter:
        raise h.CaseFailure("segments of dead processes in /dev/shm: " + ", ".join(sorted(litter)))


# ---- running -----------------------------------------------------------------------------


class Watchdog(Exception):
    pass


def run_one(name, prog, mpirun):
    fn, budget = CASES[name]
    workdir = tempfile.mkdtemp(prefix=f"skyring-faults-{name}-")
    ctx = Context(prog, mpirun, workdir)

    def on_alarm(*_):
        raise Watchdog(f"case {name} ran past its budget of {budget:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(budget) + 5)
    start = time.monotonic()
    failure, status = None, 0
    try:
        fn(ctx)
    except h.Skip as e:
        print(f"SKIP {name}: {e}")
        status = 77
    except (h.CaseFailure, Watchdog) as e:
        failure, status = str(e), 1
    finally:
        signal.alarm(0)
        for r in ctx.runs:
            r.kill_all()
    leftovers = sorted(s for r in ctx.runs for s in r.leftover_segments())
    if leftovers and status != 77:
        failure = (failure + "\n" if failure else "") + "left in /dev/shm: " + ", ".join(leftovers)
        status = 1
    # Reported; now removed, so that one failure does not fail every later run's
    # final.no_shm_litter (which is there for litter no case could attribute).
    for name in leftovers:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass
    took = time.monotonic() - start
    if status == 1:
        print(f"FAIL {name} ({took:.1f} s): {failure}")
        print("--- all processes of the case:")
        for r in ctx.runs:
            print(r.report())
        print(f"(outputs kept in {workdir})")
    else:
        if status == 0:
            print(f"PASS {name} ({took:.1f} s)")
        for r in ctx.runs:
            for o in r.outcomes():
                what = ("ok" if o.ok else f"error: {o.error[1][:300]}" if o.error
                        else "stopped" if o.stopped
                        else f"{o.inject[0]} at {o.inject[1]}" if o.inject else f"code {o.code}")
                print(f"  {o.label}: {what}")
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--budgets", action="store_true", help="with --list: each case's budget (s)")
    parser.add_argument("--prog", default=os.environ.get("FAULT_RANK"))
    parser.add_argument("--mpirun", default=shutil.which("mpirun"))
    args = parser.parse_args()
    if args.list:
        for name, (_, budget) in CASES.items():
            print(f"{name} {int(budget) + 5}" if args.budgets else name)
        return 0
    names = [n for pattern in args.cases for n in CASES if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        parser.error("no case matches; see --list")
    if not args.prog or not os.access(args.prog, os.X_OK):
        parser.error("--prog PATH to fault_rank (or FAULT_RANK) is required")
    # The idle-connection attack holds 1,100 sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    statuses = [run_one(n, os.path.abspath(args.prog), args.mpirun) for n in names]
    if any(s == 1 for s in statuses):
        return 1
    return 77 if all(s == 77 for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
