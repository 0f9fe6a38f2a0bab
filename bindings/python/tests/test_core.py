"""skyring._core under mpirun (any number of ranks): the module's own contract.

Run: mpirun -np 2 python -m pytest bindings/python/tests/test_core.py (.ci/python-tests).
Every rank runs every test in the same order; each test is collective.
"""

import torch
import pytest

from skyring import _core as c


@pytest.fixture(scope="module", autouse=True)
def runtime():
    c.init()
    yield
    c.shutdown()


def describe(t):
    return t.data_ptr(), list(t.shape), {
        torch.float32: "f32", torch.float64: "f64", torch.float16: "f16",
        torch.bfloat16: "bf16", torch.int8: "i8", torch.uint8: "u8",
        torch.int32: "i32", torch.int64: "i64"}[t.dtype]


def test_identity():
    assert c.is_initialized()
    assert 0 <= c.rank() < c.size()
    assert 0 <= c.local_rank() < c.local_size()
    assert 0 <= c.cross_rank() < c.cross_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int32, torch.int64, torch.uint8, torch.int8])
def test_allreduce_sum_every_dtype(dtype):
    n = c.size()
    t = torch.full((5, 3), c.rank() + 1).to(dtype)
    c.allreduce_async(f"sum.{dtype}", *describe(t), op="sum").wait()
    assert torch.equal(t, torch.full((5, 3), n * (n + 1) // 2).to(dtype))


def test_allgather_uneven_rows_into_a_buffer():
    r, n = c.rank(), c.size()
    t = torch.full((r + 1, 2), float(r), dtype=torch.float64)
    h = c.allgather_async("gather", *describe(t))
    assert h.wait(timeout=30)
    out = h.output()
    assert out.shape == [n * (n + 1) // 2, 2]
    got = torch.frombuffer(out, dtype=torch.float64).reshape(out.shape)
    want = torch.cat([torch.full((q + 1, 2), float(q), dtype=torch.float64) for q in range(n)])
    assert torch.equal(got, want)
    del h, out
    assert got.sum().item() == want.sum().item()  # the tensor keeps the buffer alive


def test_alltoall_received_splits():
    r, n = c.rank(), c.size()
    splits = [q + 1 for q in range(n)]  # rank q gets q + 1 rows from everyone
    t = torch.full((sum(splits),), r, dtype=torch.int32)
    h = c.alltoall_async("a2a", *describe(t), splits=splits)
    h.wait()
    out = h.output()
    assert out.received_splits == [r + 1] * n
    got = torch.frombuffer(out, dtype=torch.int32)
    assert got.tolist() == [q for q in range(n) for _ in range(r + 1)]


def test_reducescatter_rows():
    r, n = c.rank(), c.size()
    t = torch.ones(2 * n + 1, 3)
    h = c.reducescatter_async("rs", *describe(t), op="sum")
    h.wait()
    out = h.output()
    assert out.shape == [2 + (1 if r < 1 else 0), 3]
    assert torch.equal(torch.frombuffer(out, dtype=torch.float32),
                       torch.full((out.shape[0] * 3,), float(n)))


def test_broadcast_and_scales():
    t = torch.full((4,), float(c.rank()))
    c.broadcast_async("bc", *describe(t), root=c.size() - 1).wait()
    assert torch.equal(t, torch.full((4,), float(c.size() - 1)))
    t = torch.ones(4)
    c.allreduce_async("scaled", *describe(t), op="sum", prescale=2.0, postscale=0.5).wait()
    assert torch.equal(t, torch.full((4,), float(c.size())))


def test_errors_are_typed_and_name_the_rank():
    t = torch.ones(3)
    with pytest.raises(c.InvalidArgument) as e:
        c.allreduce_async("", *describe(t))
    assert isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)
    assert e.value.rank == c.rank()
    with pytest.raises(c.InvalidArgument):
        c.allreduce_async("bad dtype", t.data_ptr(), [3], "c64")
    # Shapes that differ between ranks fail on every rank, naming the ranks; the engine
    # goes on afterwards.
    if c.size() > 1:
        s = torch.ones(3 + c.rank())
        with pytest.raises(c.TransportError, match="rank 0 f32\\[3\\]"):
            c.allreduce_async("mismatch", *describe(s)).wait()
    ok = torch.ones(2)
    c.allreduce_async("after mismatch", *describe(ok)).wait()
    assert ok[0].item() == c.size()


def test_process_set_beside_the_world():
    n = c.size()
    evens = list(range(0, n, 2))
    ps = c.add_process_set(evens)
    assert c.process_set_ranks(ps) == evens
    assert c.process_set_included(ps) == (c.rank() % 2 == 0)
    if c.process_set_included(ps):
        t = torch.ones(3)
        c.allreduce_async("in set", *describe(t), process_set=ps).wait()
        assert t[0].item() == len(evens)
    c.barrier()
    c.remove_process_set(ps)
    with pytest.raises(c.InvalidArgument):
        c.process_set_ranks(ps)


def test_stats_count_bytes_per_link_class():
    s = c.stats()
    assert set(s) == {"intra-node", "intra-cloud", "cross-cloud", "egress_dollars"}
    assert all(s[k]["bytes"] >= 0 for k in ("intra-node", "intra-cloud", "cross-cloud"))


def test_shutdown_then_init_again():
    c.shutdown()
    assert not c.is_initialized()
    with pytest.raises(c.InvalidArgument):
        c.rank()
    c.init()
    t = torch.ones(2)
    c.allreduce_async("after reinit", *describe(t)).wait()
    assert t[0].item() == c.size()
