"""Attacks on the bootstrap store while a 4-rank torchrun-style job starts and runs (cases
store.*; see faults.py). Rank 0 hosts the store at MASTER_ADDR:MASTER_PORT; the ranks
share SKYRING_JOB_TOKEN. Rank 0 starts first; once it listens the attack begins, then
ranks 1-3 start and the attack goes on until the job has ended. Every real rank must
print ok: the store serves its job whatever strangers do.

The ranks run with the usual soft limit of 1,024 open files, so the idle-connection
attack (1,100 connections) exceeds what rank 0 could accept if it took every one.
"""

import harness as h
from attacks import Attacker, RssWatch, listen_addresses, wait_listening

TOKEN = "faults-job-token-0123456789abcdef"
INIT_MS = 10000  # room for the attack to be set up while rank 0 waits
RANK_NOFILE = 1024
RSS_LIMIT = 200 << 20
BUDGET_S = (INIT_MS + h.TIMEOUT_MS) / 1000 + 15

STORE_CASES = {}


def store_case(name, budget_s=BUDGET_S):
    def register(fn):
        STORE_CASES[name] = (fn, budget_s)
        return fn

    return register


def store_env(**extra):
    env = {"SKYRING_TIMEOUT_MS": str(h.TIMEOUT_MS), "SKYRING_INIT_TIMEOUT_MS": str(INIT_MS),
           "SKYRING_JOB_TOKEN": TOKEN, "SKYRING_SHM": "0"}
    env.update(extra)
    return env


def attacked_job(ctx, attack, before_others=None):
    """Runs the job under attack(attacker, rank0_outcome); before_others(port), if given,
    runs once rank 0 listens and before the others start. Returns the ranks' outcomes,
    the attacker and rank 0's peak RSS."""
    with ctx.run() as run:
        port = h.free_port()
        rank0 = run.start(0, 4, port, store_env(), nofile=RANK_NOFILE)
        rss = RssWatch(rank0.pid)
        attacker = Attacker(port)
        try:
            if not wait_listening(port, 5):
                raise h.CaseFailure("rank 0 never listened on MASTER_PORT")
            if before_others:
                before_others(port)
            attack(attacker, rank0)
            for r in range(1, 4):
                run.start(r, 4, port, store_env(), nofile=RANK_NOFILE)
            outcomes = run.wait(BUDGET_S - 8)
        finally:
            attacker.stop()
            peak = rss.stop()
    print(f"  attacker: {attacker.stats}; rank 0 peak RSS {peak / 2**20:.0f} MiB")
    return outcomes, attacker, peak


def expect_job_unharmed(outcomes):
    h.expect_all_ok(outcomes)


@store_case("store.garbage")
def garbage(ctx):
    outcomes, _, _ = attacked_job(ctx, lambda a, _: a.garbage())
    expect_job_unharmed(outcomes)


@store_case("store.truncated_frames")
def truncated(ctx):
    outcomes, _, _ = attacked_job(ctx, lambda a, _: a.truncated())
    expect_job_unharmed(outcomes)


@store_case("store.huge_length")
def huge_length(ctx):
    outcomes, _, _ = attacked_job(ctx, lambda a, _: a.huge_lengths())
    expect_job_unharmed(outcomes)


@store_case("store.slow_clients")
def slow_clients(ctx):
    outcomes, _, _ = attacked_job(ctx, lambda a, _: a.slow())
    expect_job_unharmed(outcomes)


@store_case("store.idle_connections")
def idle_connections(ctx):
    opened = []
    outcomes, _, _ = attacked_job(ctx, lambda a, _: opened.append(a.idle(1100)))
    print(f"  idle connections opened: {opened}")
    expect_job_unharmed(outcomes)


@store_case("store.big_values")
def big_values(ctx):
    outcomes, _, peak = attacked_job(ctx, lambda a, _: a.big_values())
    expect_job_unharmed(outcomes)
    if peak > RSS_LIMIT:
        raise h.CaseFailure(f"rank 0 grew to {peak / 2**20:.0f} MiB under 8 unfinished 63 MiB "
                            f"values (limit {RSS_LIMIT / 2**20:.0f} MiB)")


@store_case("store.forged_address")
def forged_address(ctx):
    outcomes, _, _ = attacked_job(ctx, lambda a, _: a.forged_addresses(4))
    expect_job_unharmed(outcomes)


@store_case("store.binds_master_addr")
def binds_master_addr(ctx):
    """MASTER_ADDR is 127.0.0.1: the store listens there, not on every interface."""
    seen = []
    outcomes, _, _ = attacked_job(ctx, lambda a, _: None,
                                  before_others=lambda port: seen.extend(listen_addresses(port)))
    expect_job_unharmed(outcomes)
    # /proc/net/tcp writes 127.0.0.1 as 0100007F; IPv6 loopback ::1 as ...01000000.
    loopback = {"0100007F", "00000000000000000000000001000000"}
    wild = [a for a in seen if a not in loopback]
    if not seen or wild:
        raise h.CaseFailure(f"the store listens on {seen or 'nothing'} (hex, /proc/net/tcp), "
                            "not only on MASTER_ADDR 127.0.0.1")


@store_case("store.wrong_token_intruder")
def wrong_token_intruder(ctx):
    """A fifth process claiming rank 1 with another SKYRING_JOB_TOKEN is refused with an
    error about the token; the job's four ranks are not disturbed."""
    with ctx.run() as run:
        port = h.free_port()
        since = h.now_ms()
        job = run.start_job(4, store_env(), port=port)
        intruder = run.start(1, 4, port, store_env(SKYRING_JOB_TOKEN="another-token-0123456789"),
                             label="intruder-rank1")
        run.wait(BUDGET_S - 8)
    h.expect_no_hang(job + [intruder])
    h.expect_no_wrong(job + [intruder])
    h.expect_all_ok(job)
    h.expect_failed(intruder, since, INIT_MS)
    if "SKYRING_JOB_TOKEN" not in intruder.error[1]:
        raise h.CaseFailure(f"the intruder's error does not mention SKYRING_JOB_TOKEN\n"
                            f"{intruder.describe()}")


@store_case("store.wrong_token_rank")
def wrong_token_rank(ctx):
    """Rank 3 has another SKYRING_JOB_TOKEN: it fails with an error about the token, and
    as the job cannot start without it, ranks 0-2 fail within the start-up timeout naming
    rank 3 (they never heard from it)."""
    with ctx.run() as run:
        since = h.now_ms()
        init = h.INIT_TIMEOUT_MS
        outcomes = run.start_job(4, store_env(SKYRING_INIT_TIMEOUT_MS=str(init)), per_rank=lambda r:
                                 {"SKYRING_JOB_TOKEN": "another-token-0123456789"} if r == 3 else {})
        run.wait(init / 1000 + 10)
    h.expect_no_hang(outcomes)
    h.expect_no_wrong(outcomes)
    h.expect_failed(outcomes[3], since, init)
    if "SKYRING_JOB_TOKEN" not in outcomes[3].error[1]:
        raise h.CaseFailure(f"rank 3's error does not mention SKYRING_JOB_TOKEN\n"
                            f"{outcomes[3].describe()}")
    h.expect_all_fail_naming(outcomes[:3], 3, since, init)
