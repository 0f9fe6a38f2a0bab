"""Tests of skyringrun (skyring.run): its command line, the mpirun command it builds, and
real launches, with the local launcher and with Open MPI's mpirun, of tiny Python programs
as ranks (no skyring module needed by them).

Run: PYTHONPATH=bindings/python /usr/bin/python3 -m pytest bindings/python/tests/test_run.py
Every launch has a timeout; the slow cases (a rank that fails while others sleep a minute)
check that the job ends in a bounded time and that no rank is left running.
"""

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "skyring")

# The launcher needs no engine. skyring/__init__.py imports skyring._core, absent from a
# source tree that was not built: then skyring.run is loaded under a bare package object,
# dropped again afterwards so that other tests see the real import.
_BOOT = f"""
import runpy, sys, types
try:
    import skyring
except ImportError:
    package = types.ModuleType("skyring")
    package.__path__ = [{PACKAGE_DIR!r}]
    sys.modules["skyring"] = package
sys.argv[0] = "skyringrun"
runpy.run_module("skyring.run", run_name="__main__", alter_sys=True)
"""


def _load_launcher():
    try:
        return importlib.import_module("skyring.run")
    except ImportError:
        pass
    saved = sys.modules.pop("skyring", None)
    stub = types.ModuleType("skyring")
    stub.__path__ = [PACKAGE_DIR]
    sys.modules["skyring"] = stub
    try:
        return importlib.import_module("skyring.run")
    finally:
        sys.modules.pop("skyring", None)
        if saved is not None:
            sys.modules["skyring"] = saved


run = _load_launcher()
options = importlib.import_module("skyring.run.options")
mpi = importlib.import_module("skyring.run.mpi")
local = importlib.import_module("skyring.run.local")
procs = importlib.import_module("skyring.run.procs")

LAUNCH_TIMEOUT = 90  # seconds; generous for a shared 2-core machine, still bounded
HAVE_OPEN_MPI = mpi.find_open_mpi() is not None
LAUNCHERS = [
    "local",
    pytest.param("mpi", marks=pytest.mark.skipif(not HAVE_OPEN_MPI, reason="no Open MPI mpirun")),
]


def launch(args, timeout=LAUNCH_TIMEOUT, env=None):
    """Runs `python -m skyring.run ARGS`; returns (exit code, stdout, stderr, seconds)."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _BOOT] + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return out.returncode, out.stdout, out.stderr, time.monotonic() - start


def alive(pid):
    """True while pid runs (a zombie nobody reaped counts as dead: mpirun's orphans are
    reparented to an init that may never reap them in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# A rank: records what it sees in DIR/rank.R.json, then acts on its arguments:
#   fail R CODE  - rank R exits with CODE after 0.3 s; the others sleep 60 s
#   signal R S   - rank R kills itself with signal S after 0.3 s; the others sleep 60 s
#   sleep T      - every rank sleeps T s (catching SIGINT to record it)
#   chatty S     - writes a line to stderr every 10 ms for S seconds
#   stubborn     - ranks other than 0 ignore SIGTERM and sleep; rank 0 exits with 4
#   cascade R N  - rank R exits with 3 once all N ranks started; the others exit with 1
#                  as soon as they see it gone (as skyring's survivors raise, naming it)
RANK_PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys, time
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ["RANK"])
    out_dir = sys.argv[1]
    seen = {k: v for k, v in os.environ.items()
            if k.startswith(("SKYRING_", "OMPI_COMM_WORLD_")) or k in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "EXTRA_VAR")}
    seen["pid"] = os.getpid()
    with open(os.path.join(out_dir, f"rank.{rank}.json.tmp"), "w") as f:
        json.dump(seen, f)
    os.rename(os.path.join(out_dir, f"rank.{rank}.json.tmp"),
              os.path.join(out_dir, f"rank.{rank}.json"))
    print(f"hello from {rank}", flush=True)
    print(f"warning from {rank}", file=sys.stderr, flush=True)
    action = sys.argv[2] if len(sys.argv) > 2 else "ok"
    def wait_for_all(n):
        deadline = time.time() + 30
        while time.time() < deadline and len(
                [f for f in os.listdir(out_dir) if f.endswith(".json")]) < n:
            time.sleep(0.05)
    if action == "fail" or action == "signal":
        victim, value = int(sys.argv[3]), int(sys.argv[4])
        if rank == victim:
            wait_for_all(int(sys.argv[5]))
            time.sleep(0.3)
            if action == "signal":
                os.kill(os.getpid(), value)
            sys.exit(value)
        time.sleep(60)
    elif action == "sleep":
        try:
            time.sleep(float(sys.argv[3]))
        except KeyboardInterrupt:
            open(os.path.join(out_dir, f"sigint.{rank}"), "w").close()
            sys.exit(1)
    elif action == "cascade":
        victim, n = int(sys.argv[3]), int(sys.argv[4])
        wait_for_all(n)
        if rank == victim:
            time.sleep(0.3)
            sys.exit(3)
        with open(os.path.join(out_dir, f"rank.{victim}.json")) as f:
            pid = json.load(f)["pid"]
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)
        sys.exit(1)
    elif action == "chatty":
        deadline = time.time() + float(sys.argv[3])
        while time.time() < deadline:
            print(f"line from {rank}", file=sys.stderr, flush=True)
            time.sleep(0.01)
    elif action == "stubborn":
        if rank == 0:
            wait_for_all(int(sys.argv[3]))
            sys.exit(4)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    """
)


@pytest.fixture
def rank_prog(tmp_path):
    path = tmp_path / "rank.py"
    path.write_text(RANK_PROGRAM)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def command(*args):
        return [sys.executable, str(path), str(out_dir)] + [str(a) for a in args]

    def seen():
        result = {}
        for name in os.listdir(out_dir):
            if name.endswith(".json"):
                with open(out_dir / name) as f:
                    result[int(name.split(".")[1])] = json.load(f)
        return result

    command.seen = seen
    command.out_dir = out_dir
    return command


def assert_all_gone(seen, within=10.0):
    pids = [s["pid"] for s in seen.values()]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks still running after the launcher exited: {left}"


# ---- the command line -------------------------------------------------------------------


def test_parse_options_and_command():
    o = options.parse_args(["-np", "4", "--clouds", "aws:2,gcp:2", "python3", "t.py", "-np", "9"])
    assert o.np == 4
    assert o.command == ["python3", "t.py", "-np", "9"]  # the command's own options stay its own
    assert o.rank_clouds() == ["aws", "aws", "gcp", "gcp"]
    assert o.launcher == "auto"
    o = options.parse_args(["--clouds=a:1,b:2", "--no-mpi", "-x", "A=1", "-x", "B", "--", "-cmd"])
    assert o.np == 3 and o.launcher == "local" and o.command == ["-cmd"]
    assert o.extra_env == {"A": "1", "B": None}
    o = options.parse_args(["-H", "h1:2,h2", "--verbose", "--prefix-output", "prog"])
    assert o.hosts == [options.Host("h1", 2), options.Host("h2", 1)] and o.np == 3
    assert o.verbose and o.prefix_output


def test_parse_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1 slots=4\n\nnode2 slots=2 max_slots=8  # gpu\nnode3\n")
    o = options.parse_args(["--hostfile", str(hostfile), "-np", "5", "prog"])
    assert [(h.name, h.slots) for h in o.hosts] == [("node1", 4), ("node2", 2), ("node3", 1)]
    assert o.hostfile == str(hostfile) and o.total_slots() == 7
    hostfile.write_text("node1 cpus=4\n")
    with pytest.raises(options.UsageError, match=r"hosts:1: expected 'host slots=N'"):
        options.parse_args(["--hostfile", str(hostfile), "prog"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-np", "0", "prog"], "-np: expected a positive integer, got 0"),
        (["-np", "x", "prog"], "-np: expected a positive integer"),
        (["-np", "3", "--clouds", "aws:2,gcp:2", "prog"], "adds up to 4 ranks, but -np is 3"),
        (["--clouds", "aws", "prog"], "expected CLOUD:N"),
        (["--clouds", "aws:0", "prog"], "count: expected a positive integer"),
        (["-np", "2", "--bogus", "prog"], "unknown option --bogus"),
        (["-np", "2"], "missing the command"),
        (["prog"], "how many ranks"),
        (["-np"], "-np needs a value"),
        (["-np", "2", "-H", "a:1", "--hostfile", "f", "prog"], "not both"),
        (["-np", "2", "--launcher", "ssh", "prog"], "--launcher ssh"),
        (["-np", "2", "--hostfile", "/nonexistent/hosts", "prog"], "No such file"),
        (["-np", "2", "-H", "a:0", "prog"], "slots: expected a positive integer"),
    ],
)
def test_bad_input_exits_2_with_usage(argv, message, capsys):
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("skyringrun: ") and "usage: skyringrun" in err


def test_help_exits_0(capsys):
    assert run.main(["--help"]) == 0
    assert "usage: skyringrun" in capsys.readouterr().out


def test_bad_input_from_the_command_line():
    code, _, err, _ = launch(["-np", "2", "--clouds", "aws:1", "true"], timeout=30)
    assert code == 2 and "adds up to 1 ranks, but -np is 2" in err and "usage:" in err


# ---- what the launchers hand the ranks --------------------------------------------------


def test_mpirun_command_repeats_variables_and_hosts_in_every_app_context():
    o = options.parse_args(
        ["-np", "4", "--clouds", "aws:2,gcp:2", "-H", "a:2,b:2", "-x", "PYTHONPATH", "prog", "x"]
    )
    environ = {"SKYRING_TIMEOUT_MS": "5", "SKYRING_CLOUD": "outer", "HOME": "/root"}
    cmd = mpi.build_command(o, environ, "mpirun", as_root=True, cores=2)
    assert cmd[:4] == ["mpirun", "--bind-to", "none", "--allow-run-as-root"]
    assert "--oversubscribe" not in cmd  # 4 ranks on 4 slots
    contexts = " ".join(cmd[4:]).split(" : ")
    assert contexts == [
        "-np 2 -H a:2,b:2 -x SKYRING_TIMEOUT_MS -x PYTHONPATH -x SKYRING_CLOUD=aws prog x",
        "-np 2 -H a:2,b:2 -x SKYRING_TIMEOUT_MS -x PYTHONPATH -x SKYRING_CLOUD=gcp prog x",
    ]


def test_mpirun_command_oversubscribes_beyond_slots_and_cores():
    o = options.parse_args(["-np", "3", "--prefix-output", "--mpi-args", "--mca btl self", "p"])
    cmd = mpi.build_command(o, {"SKYRING_CLOUD": "c"}, "mpirun", as_root=False, cores=2)
    assert cmd == [
        "mpirun", "--bind-to", "none", "--oversubscribe", "--tag-output", "--mca", "btl", "self",
        "-np", "3", "-x", "SKYRING_CLOUD", "p",
    ]  # fmt: skip
    assert "--oversubscribe" not in mpi.build_command(o, {}, cores=3)
    # With hosts, their slots count, not this machine's cores.
    o = options.LaunchOptions(np=3, command=["p"], hosts=[options.Host("h", 2)], hostfile="hf")
    cmd = mpi.build_command(o, {}, cores=64)
    assert "--oversubscribe" in cmd
    assert cmd[cmd.index("-np") :] == ["-np", "3", "--hostfile", "hf", "p"]


def test_mpirun_command_refuses_a_colon_argument():
    o = options.parse_args(["-np", "2", "prog", ":", "other"])
    with pytest.raises(options.UsageError, match="argument ':'"):
        mpi.build_command(o, {})


def test_failure_scanner_reads_open_mpi_reports():
    scan = mpi.FailureScanner()
    for line in ["x", "  Process name: [[9416,1],2]", "  Exit code:    3", "  Exit code: 4"]:
        scan(line)
    assert scan.failure == (2, 3)
    scan = mpi.FailureScanner()
    scan("mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).")
    assert scan.failure == (1, -9)
    assert procs.describe_exit(1, -9) == ("skyringrun: rank 1 was killed by signal 9", 137)
    assert procs.describe_exit(2, 3) == ("skyringrun: rank 2 exited with code 3", 3)


def test_local_environments_are_torchrun_style():
    o = options.parse_args(["--clouds", "aws:1,gcp:2", "-x", "EXTRA=1", "prog"])
    environ = {
        "SKYRING_JOB_ID": "mine",
        "SKYRING_CLOUD": "outer",
        "OMPI_COMM_WORLD_RANK": "7",  # an outer mpirun's: would outrank ours in Config
        "PMIX_RANK": "7",
        "PATH": "/bin",
    }
    envs = local.rank_environments(o, environ, 29500, "fresh", "t" * 32)
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]
    assert [e["SKYRING_CLOUD"] for e in envs] == ["aws", "gcp", "gcp"]
    for e in envs:
        assert e["WORLD_SIZE"] == "3" and e["LOCAL_WORLD_SIZE"] == "3"
        assert e["LOCAL_RANK"] == e["RANK"]
        assert (e["MASTER_ADDR"], e["MASTER_PORT"]) == ("127.0.0.1", "29500")
        assert e["SKYRING_JOB_ID"] == "mine" and e["SKYRING_JOB_TOKEN"] == "t" * 32
        assert e["EXTRA"] == "1" and e["PATH"] == "/bin"
        assert "OMPI_COMM_WORLD_RANK" not in e and "PMIX_RANK" not in e


def test_local_launcher_refuses_other_hosts(rank_prog):
    code, _, err, _ = launch(["--no-mpi", "-H", "localhost:2,otherhost:2", *rank_prog()])
    assert code == 2 and "this machine only, but 2 hosts were given" in err
    code, _, err, _ = launch(["--no-mpi", "-H", "otherhost:2", *rank_prog()])
    assert code == 2 and "not on 'otherhost'" in err
    assert rank_prog.seen() == {}


# ---- real launches ----------------------------------------------------------------------


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_rank_sees_its_rank_cloud_and_skyring_variables(launcher, rank_prog):
    env = dict(os.environ, SKYRING_TEST_VALUE="v 1", SKYRING_CLOUD="outer", EXTRA_VAR="e")
    args = ["--launcher", launcher, "-np", "4", "--clouds", "aws:2,gcp:2", "-x", "EXTRA_VAR"]
    code, out, err, _ = launch(args + rank_prog(), env=env)
    assert code == 0, err
    seen = rank_prog.seen()
    assert sorted(seen) == [0, 1, 2, 3]
    assert [seen[r]["SKYRING_CLOUD"] for r in range(4)] == ["aws", "aws", "gcp", "gcp"]
    for r in range(4):
        assert seen[r]["SKYRING_TEST_VALUE"] == "v 1"
        assert seen[r]["EXTRA_VAR"] == "e"
        assert f"hello from {r}" in out and f"warning from {r}" in err
    if launcher == "local":
        job_ids = {seen[r]["SKYRING_JOB_ID"] for r in range(4)}
        ports = {seen[r]["MASTER_PORT"] for r in range(4)}
        assert len(job_ids) == 1 and len(ports) == 1 and job_ids != {None}
        for r in range(4):
            assert (seen[r]["RANK"], seen[r]["WORLD_SIZE"]) == (str(r), "4")
            assert (seen[r]["LOCAL_RANK"], seen[r]["LOCAL_WORLD_SIZE"]) == (str(r), "4")
            assert seen[r]["MASTER_ADDR"] == "127.0.0.1"
            assert len(seen[r]["SKYRING_JOB_TOKEN"]) >= 16
    else:
        for r in range(4):
            assert seen[r]["OMPI_COMM_WORLD_SIZE"] == "4"


def test_local_launch_gets_a_fresh_job_id_each_time(rank_prog):
    ids = []
    for _ in range(2):
        code, _, err, _ = launch(["--no-mpi", "-np", "1"] + rank_prog())
        assert code == 0, err
        ids.append(rank_prog.seen()[0]["SKYRING_JOB_ID"])
    assert ids[0] != ids[1] and ids[0].startswith("skyringrun-")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_failed_rank_ends_the_job_with_its_code(launcher, rank_prog):
    args = ["--launcher", launcher, "-np", "3"] + rank_prog("fail", 2, 3, 3)
    code, _, err, elapsed = launch(args)
    assert code == 3, err
    assert "skyringrun: rank 2 exited with code 3\n" in err
    assert elapsed < 30  # the others sleep 60 s: they were ended, not waited for
    seen = rank_prog.seen()
    assert sorted(seen) == [0, 1, 2]
    assert_all_gone(seen)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_first_rank_to_fail_is_named_not_the_survivors_it_took_down(launcher, rank_prog):
    args = ["--launcher", launcher, "-np", "3"] + rank_prog("cascade", 1, 3)
    code, _, err, _ = launch(args)
    assert code == 3, err
    assert "skyringrun: rank 1 exited with code 3\n" in err
    assert err.count("skyringrun: rank") == 1
    assert_all_gone(rank_prog.seen())


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_rank_killed_by_a_signal(launcher, rank_prog):
    args = ["--launcher", launcher, "-np", "3"] + rank_prog("signal", 1, 9, 3)
    code, _, err, elapsed = launch(args)
    assert code == 128 + 9, err
    assert "skyringrun: rank 1 was killed by signal 9\n" in err
    assert elapsed < 30
    assert_all_gone(rank_prog.seen())


def test_ranks_that_ignore_sigterm_get_sigkill_after_the_grace(rank_prog):
    args = ["--no-mpi", "--kill-grace", "1", "-np", "3"] + rank_prog("stubborn", 3)
    code, _, err, elapsed = launch(args)
    assert code == 4 and "skyringrun: rank 0 exited with code 4" in err
    assert elapsed < 20
    assert_all_gone(rank_prog.seen(), within=2.0)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ctrl_c_reaches_the_ranks(launcher, rank_prog):
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, "--launcher", launcher, "-np", "2"] + rank_prog("sleep", 60),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(rank_prog.seen()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # past the ranks' start-up, into their sleep
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "got signal 2" in err
    if launcher == "local":  # Open MPI turns it into SIGTERM for the ranks
        assert sorted(os.listdir(rank_prog.out_dir)) == sorted(
            ["rank.0.json", "rank.1.json", "sigint.0", "sigint.1"]
        )
    assert_all_gone(rank_prog.seen())


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("ranks_write", [False, True], ids=["quiet", "chatty"])
def test_no_rank_outlives_a_launcher_killed_by_sigkill(launcher, ranks_write, rank_prog):
    # chatty: the ranks keep writing to stderr, which reaches mpirun's pipe to the dead
    # launcher (SIGPIPE killed mpirun before it could end them, once).
    action = ["chatty", 60] if ranks_write else ["sleep", 60]
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, "--launcher", launcher, "-np", "2"] + rank_prog(*action),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(rank_prog.seen()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(rank_prog.seen()) == 2
    assert_all_gone(rank_prog.seen(), within=15.0)


def test_prefix_output_local(rank_prog):
    code, out, err, _ = launch(["--no-mpi", "--prefix-output", "-np", "2"] + rank_prog())
    assert code == 0, err
    assert sorted(out.splitlines()) == ["[0] hello from 0", "[1] hello from 1"]
    assert "[0] warning from 0\n" in err and "[1] warning from 1\n" in err


@pytest.mark.skipif(not HAVE_OPEN_MPI, reason="no Open MPI mpirun")
def test_prefix_output_under_mpirun_is_open_mpis_tag(rank_prog):
    code, out, err, _ = launch(["--launcher", "mpi", "--prefix-output", "-np", "2"] + rank_prog())
    assert code == 0, err
    assert ",0]<stdout>:" in out and ",1]<stdout>:" in out


@pytest.mark.skipif(not HAVE_OPEN_MPI, reason="no Open MPI mpirun")
def test_verbose_prints_the_mpirun_command(rank_prog):
    env = dict(os.environ, SKYRING_TEST_VALUE="1")
    code, _, err, _ = launch(["--verbose", "--clouds", "a:1,b:1"] + rank_prog(), env=env)
    assert code == 0, err
    line = next(l for l in err.splitlines() if l.startswith("skyringrun: ") and "mpirun" in l)
    assert "--allow-run-as-root" in line or os.geteuid() != 0
    assert line.count("-x SKYRING_TEST_VALUE") == 2 and " : " in line


def test_bad_extra_variable_name(capsys):
    assert run.main(["-np", "1", "-x", "1BAD=2", "prog"]) == 2
    assert "-x '1BAD=2': expected NAME or NAME=VALUE" in capsys.readouterr().err


def test_missing_program_is_reported(tmp_path):
    code, _, err, _ = launch(["--no-mpi", "-np", "2", str(tmp_path / "no-such-program")])
    assert code == 127 and "skyringrun: cannot start" in err
