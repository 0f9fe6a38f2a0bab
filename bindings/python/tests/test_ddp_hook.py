"""skyring.torch.ddp_comm_hook: DistributedDataParallel averaging through skyring.

Run: mpirun -np 2 python -m pytest bindings/python/tests/test_ddp_hook.py (.ci/python-tests
runs it with the other files in one pytest process per rank, -np 2 then -np 4). Every rank
runs every test in the same order; each test is collective. skyring is initialised with
_core.init() (a no-op when another file did it) and never shut down here; torch.distributed
(Gloo, for DDP's own setup) only when nobody initialised it.

The compressed test needs ranks in two clouds. When this job has them (an MPMD mpirun
with a SKYRING_CLOUD per app context) it trains in place; otherwise rank 0 runs this file
as a 2-rank job of its own under skyringrun's local launcher with --clouds a:1,b:1.
"""

import faulthandler
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from skyring import _core as c
from skyring.torch.ddp import DDPHookState, ddp_comm_hook, init_process_group

TEST_LIMIT_S = 240  # per test; the nested job's own limit is below it
CHILD_LIMIT_S = 180


@pytest.fixture(scope="module", autouse=True)
def runtime():
    c.init()
    init_process_group()
    yield
    # Neither is shut down: other files in this process may still use them.


@pytest.fixture(autouse=True)
def bounded():
    """A test that overruns its limit prints every thread's stack and ends the rank (the
    others then fail on their peer), rather than hanging the job."""
    faulthandler.dump_traceback_later(TEST_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def make_model(dtype):
    # DDP's first bucket takes up to 1 MB whatever bucket_cap_mb says: the middle layer's
    # weight (1 MiB in f32) makes sure that more buckets follow.
    torch.manual_seed(1234)  # every rank alike; DDP would broadcast rank 0's anyway
    return torch.nn.Sequential(
        torch.nn.Linear(12, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4096), torch.nn.Tanh(),
        torch.nn.Linear(4096, 3)).to(dtype)


def batch(step, rank, dtype):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 12, generator=g)
    return x.to(dtype), (x[:, :3] * 0.5 - 0.25).to(dtype)


def train(dtype, state=None, hook=None, steps=6, lr=0.02):
    """Trains the model with DDP (buckets small enough to make several) and returns its
    flattened parameters, the losses, and the set of bucket indices the hook saw."""
    seen = set()

    def recording_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        seen.add(bucket.index())
        return hook(state, bucket)

    model = DDP(make_model(dtype), bucket_cap_mb=0.002)
    if hook is not None:
        model.register_comm_hook(state, recording_hook)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x, y = batch(step, dist.get_rank(), dtype)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return params, losses, seen


def gathered(t):
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def wait_future(fut, limit_s=60):
    deadline = time.monotonic() + limit_s
    while not fut.done():
        assert time.monotonic() < deadline, "the hook's future did not complete"
        time.sleep(0.01)
    return fut.wait()  # raises the future's error


class FakeBucket:
    """What the hook reads of a dist.GradBucket, for calling the hook directly."""

    def __init__(self, t, index=0):
        self.t, self.i = t, index

    def buffer(self):
        return self.t

    def index(self):
        return self.i

    def is_last(self):
        return True


def test_state_checks_its_options():
    s = DDPHookState()
    assert (s.compression, s.process_set, s.name) == ("default", 0, "ddp")

    class Set:
        process_set_id = 3

    assert DDPHookState(process_set=Set()).process_set == 3
    with pytest.raises(ValueError):
        DDPHookState(process_set=-1)
    with pytest.raises(ValueError):
        DDPHookState(name="")
    with pytest.raises(TypeError):
        DDPHookState(compression=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hook_trains_like_gloo(dtype):
    want, want_losses, _ = train(dtype)
    got, losses, seen = train(dtype, DDPHookState(compression="none"), ddp_comm_hook)
    assert len(seen) > 1  # several buckets, through the rebuild after the first step
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, want, rtol=0, atol=tol), (got - want).abs().max().item()
    for other in gathered(got):
        assert torch.equal(other, got)  # the replicas stay identical
    assert losses == pytest.approx(want_losses, abs=1e-4)


def test_default_state_is_the_jobs_compression():
    # state None: "default", SKYRING_COMPRESSION (none unless the job sets one).
    got, losses, seen = train(torch.float32, None, ddp_comm_hook)
    assert seen and losses[-1] < losses[0]
    for other in gathered(got):
        assert torch.allclose(other, got, rtol=0, atol=1e-2)


def cross_cloud_bytes():
    return c.stats()["cross-cloud"]["bytes"]


def in_two_clouds():
    """Whether this job's ranks span clouds: an exact allreduce moves cross-cloud bytes
    on some rank."""
    before = cross_cloud_bytes()
    t = torch.ones(1024)
    c.allreduce_async("ddp.test.clouds", t.data_ptr(), [1024], "f32").wait()
    moved = torch.tensor([float(cross_cloud_bytes() > before)])
    dist.all_reduce(moved, op=dist.ReduceOp.MAX)
    return moved.item() > 0


def check_compressed_training():
    """int8 on the cross-cloud hop: fewer bytes there than exact, and the model still
    trains: loss falls, ranks agree, parameters near the exact run's."""
    before = cross_cloud_bytes()
    exact, _, _ = train(torch.float32, DDPHookState(compression="none"), ddp_comm_hook,
                        steps=8)
    exact_bytes = cross_cloud_bytes() - before
    before = cross_cloud_bytes()
    got, losses, _ = train(torch.float32, DDPHookState(compression="int8"), ddp_comm_hook,
                           steps=8)
    int8_bytes = cross_cloud_bytes() - before
    assert 0 < int8_bytes < 0.5 * exact_bytes, (int8_bytes, exact_bytes)
    assert losses[-1] < losses[0], losses
    for other in gathered(got):
        assert torch.equal(other, got)  # every rank decodes the same bytes (compression.md)
    assert torch.allclose(got, exact, rtol=0, atol=5e-3), (got - exact).abs().max().item()


def test_int8_across_clouds_still_trains():
    if in_two_clouds():
        check_compressed_training()
        return
    # One cloud here: rank 0 runs a job of two clouds (this file as a script); the other
    # ranks wait for its verdict on the Gloo group.
    ok = torch.zeros(1)
    report = ""
    if dist.get_rank() == 0:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
        cmd = [sys.executable, "-m", "skyring.run", "--no-mpi", "-np", "2", "--clouds",
               "a:1,b:1", sys.executable, "-u", os.path.abspath(__file__), "--compressed-child"]
        try:
            r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=CHILD_LIMIT_S)
            ok[0] = float(r.returncode == 0 and "compressed: ok" in r.stdout)
            report = f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        except subprocess.TimeoutExpired as e:
            report = f"timed out after {CHILD_LIMIT_S} s: {e.stdout!r} {e.stderr!r}"
    dist.broadcast(ok, src=0)
    assert ok.item() == 1.0, report if dist.get_rank() == 0 else "rank 0's two-cloud job failed"


def test_failed_allreduce_fails_the_future():
    if c.size() < 2:
        pytest.skip("needs ranks that disagree")

    t = torch.ones(4 + c.rank())  # each rank a different shape: every rank fails
    fut = ddp_comm_hook(DDPHookState(name="ddp.test.mismatch"), FakeBucket(t))
    with pytest.raises(RuntimeError, match="TransportError.*differently"):
        wait_future(fut)
    # The engine goes on.
    ok = torch.ones(2)
    wait_future(ddp_comm_hook(DDPHookState(name="ddp.test.after"), FakeBucket(ok)))
    assert torch.equal(ok, torch.ones(2))


def test_process_set_averages_over_its_ranks():
    n = c.size()
    members = sorted({0, n - 1})
    ps = c.add_process_set(members)
    try:
        if c.process_set_included(ps):
            t = torch.full((5,), float(c.rank()))
            state = DDPHookState(compression="none", process_set=ps, name="ddp.test.set")
            got = wait_future(ddp_comm_hook(state, FakeBucket(t, index=2)))
            assert got is t  # in place
            assert torch.equal(t, torch.full((5,), sum(members) / len(members)))
        c.barrier()
    finally:
        c.remove_process_set(ps)


def test_ddp_raises_the_hooks_error():
    model = DDP(make_model(torch.float32))
    model.register_comm_hook(DDPHookState(compression="nonsense:7"), ddp_comm_hook)
    x, y = batch(0, dist.get_rank(), torch.float32)
    with pytest.raises(RuntimeError, match="InvalidArgument.*nonsense") as e:
        torch.nn.functional.mse_loss(model(x), y).backward()
    assert "Unable to cast" not in str(e.value)


def test_unsupported_dtype_fails_the_future():
    with pytest.raises(RuntimeError, match="InvalidArgument.*int32"):
        wait_future(ddp_comm_hook(None, FakeBucket(torch.zeros(3, dtype=torch.int32))))


def _compressed_child() -> int:
    """A rank of the two-cloud job of test_int8_across_clouds_still_trains."""
    faulthandler.dump_traceback_later(CHILD_LIMIT_S - 20, exit=True)
    c.init()
    init_process_group()
    assert in_two_clouds(), "the ranks of --clouds a:1,b:1 are not in two clouds"
    check_compressed_training()
    dist.barrier()
    print("compressed: ok", flush=True)
    dist.destroy_process_group()
    c.shutdown()
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--compressed-child"]:
    sys.exit(_compressed_child())
