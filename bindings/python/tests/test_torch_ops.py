"""skyring.torch collectives, under mpirun with any number of ranks (1, 2, 4, ...):

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 SKYRING_STALL_SHUTDOWN_S=30 \
      timeout 600 mpirun --oversubscribe -np 4 /usr/bin/python3 -m pytest -q -x \
      bindings/python/tests/test_torch_ops.py

Every rank runs every test in the same order (collectives pair up by name). Inputs are
integer-valued, so sums are exact and results are compared bit for bit.
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch

import skyring.torch as hvd

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.int32, torch.int64, torch.uint8, torch.int8]
DTYPES = FLOATS + INTS


@pytest.fixture(scope="module", autouse=True)
def initialized():
    hvd.init()
    yield
    hvd.barrier()


def ranked(shape, dtype, r):
    """A tensor of small integers that depend on rank r (fits every dtype, exact sums)."""
    n = 1
    for d in shape:
        n *= d
    base = torch.arange(n, dtype=torch.int64).reshape(shape) % 5
    return (base + r).to(dtype)


def small(shape, dtype, r):
    """Ones and twos (products of them fit int8 for any world of this test)."""
    return (ranked(shape, torch.int64, r) % 2 + 1).to(dtype)


def expected_reduce(op, shape, dtype, gen=ranked):
    stack = torch.stack([gen(shape, torch.float64, r) for r in range(hvd.size())])
    if op == hvd.Sum:
        out = stack.sum(0)
    elif op == hvd.Average:
        out = stack.sum(0) / hvd.size()
        if not dtype.is_floating_point:
            out = out.trunc()
    elif op == hvd.Min:
        out = stack.min(0).values
    elif op == hvd.Max:
        out = stack.max(0).values
    else:
        out = stack.prod(0)
    return out


def close(actual, expected, dtype):
    expected = expected.to(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.allclose(actual.double(), expected.double(), rtol=1e-2, atol=1e-2)
    return torch.equal(actual, expected)


def test_ranks_agree_with_launcher():
    assert 0 <= hvd.rank() < hvd.size()
    assert 0 <= hvd.local_rank() < hvd.local_size()
    assert 0 <= hvd.cross_rank() < hvd.cross_size()
    assert hvd.global_process_set.ranks == list(range(hvd.size()))
    assert hvd.is_initialized()
    ranks = hvd.allgather_object(hvd.rank())
    assert ranks == list(range(hvd.size()))


def test_build_queries_are_truthful():
    assert hvd.mpi_built() is True
    assert not hvd.gloo_built() and not hvd.nccl_built() and not hvd.cuda_built()
    assert not hvd.ccl_built() and not hvd.rocm_built() and not hvd.ddl_built()
    assert isinstance(hvd.mpi_enabled(), bool)


def test_calls_before_init_raise_value_error():
    code = ("import skyring.torch as hvd\n"
            "for f in (hvd.rank, hvd.size, lambda: hvd.allreduce(__import__('torch').ones(2))):\n"
            "    try:\n        f()\n    except ValueError as e:\n"
            "        assert 'init' in str(e), e\n    else:\n        raise SystemExit('no error')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", [hvd.Sum, hvd.Average, hvd.Min, hvd.Max, hvd.Product],
                         ids=["sum", "avg", "min", "max", "prod"])
def test_allreduce_every_form(dtype, op):
    shape = [3, 5]
    gen = small if op == hvd.Product else ranked
    want = expected_reduce(op, shape, dtype, gen)
    x = gen(shape, dtype, hvd.rank())
    before = x.clone()
    assert close(hvd.allreduce(x, op=op), want, dtype)
    assert torch.equal(x, before), "allreduce modified its input"
    assert close(hvd.synchronize(hvd.allreduce_async(x, op=op)), want, dtype)
    y = x.clone()
    assert hvd.allreduce_(y, op=op) is y and close(y, want, dtype)
    y = x.clone()
    h = hvd.allreduce_async_(y, op=op)
    assert isinstance(h, int)
    assert hvd.synchronize(h) is y and close(y, want, dtype)


def test_allreduce_average_is_default_and_average_flag():
    x = ranked([4], torch.float64, hvd.rank())
    assert torch.equal(hvd.allreduce(x), expected_reduce(hvd.Average, [4], torch.float64))
    with pytest.warns(DeprecationWarning):
        summed = hvd.allreduce(x, average=False)
    assert torch.equal(summed, expected_reduce(hvd.Sum, [4], torch.float64))
    with pytest.raises(ValueError):
        hvd.allreduce(x, average=True, op=hvd.Sum)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64],
                         ids=str)
def test_allreduce_prescale_postscale(dtype):
    x = ranked([7], dtype, hvd.rank())
    got = hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.5, postscale_factor=3.0)
    parts = [(ranked([7], torch.float64, r) * 0.5) for r in range(hvd.size())]
    if not dtype.is_floating_point:  # Horovod: integers scaled in float64, then truncated
        parts = [p.to(dtype).double() for p in parts]
    want = sum(parts) * 3.0
    assert torch.equal(got, want.to(dtype))


def test_noncontiguous_inputs_in_and_out_of_place():
    base = ranked([6, 4], torch.float32, hvd.rank())
    x = base.t()  # not contiguous
    assert not x.is_contiguous()
    want = expected_reduce(hvd.Sum, [6, 4], torch.float32).t()
    assert torch.equal(hvd.allreduce(x, op=hvd.Sum), want)
    hvd.allreduce_(x, op=hvd.Sum)
    assert torch.equal(x, want) and torch.equal(base, want.t())
    # A leaf that requires grad: the copy back is no autograd in-place op.
    w = torch.nn.Parameter(torch.ones(4, 3).t())
    hvd.allreduce_(w, op=hvd.Sum)
    hvd.broadcast_(w, 0)
    assert torch.equal(w.detach(), torch.full((3, 4), float(hvd.size())))


def test_async_handles_poll_and_synchronize():
    xs = [ranked([1000], torch.float32, hvd.rank()) for _ in range(8)]
    handles = [hvd.allreduce_async(x, op=hvd.Sum, name=f"poll.{i}") for i, x in enumerate(xs)]
    for h in reversed(handles):
        out = hvd.synchronize(h)
        assert torch.equal(out, expected_reduce(hvd.Sum, [1000], torch.float32))
    assert hvd.synchronize(handles[0]) is None  # an already-synchronized handle, as Horovod
    h = hvd.allreduce_async(xs[0], name="poll.again")
    while not hvd.poll(h):
        pass
    hvd.synchronize(h)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grouped_allreduce_every_form(dtype):
    shapes = [[3], [2, 2], [5]]
    xs = [ranked(s, dtype, hvd.rank()) for s in shapes]
    wants = [expected_reduce(hvd.Sum, s, dtype) for s in shapes]
    outs = hvd.grouped_allreduce(xs, op=hvd.Sum)
    assert all(close(o, w, dtype) for o, w in zip(outs, wants))
    outs = hvd.synchronize(hvd.grouped_allreduce_async(xs, op=hvd.Sum))
    assert all(close(o, w, dtype) for o, w in zip(outs, wants))
    ys = [x.clone() for x in xs]
    hvd.grouped_allreduce_(ys, op=hvd.Sum)
    assert all(close(y, w, dtype) for y, w in zip(ys, wants))
    ys = [x.clone() for x in xs]
    hvd.synchronize(hvd.grouped_allreduce_async_(ys, op=hvd.Sum))
    assert all(close(y, w, dtype) for y, w in zip(ys, wants))


@pytest.mark.parametrize("dtype", DTYPES + [torch.int16, torch.bool, torch.complex64], ids=str)
def test_allgather_variable_first_dimension(dtype):
    r = hvd.rank()
    x = ranked([r + 1, 3], dtype, r)
    got = hvd.allgather(x)
    assert got.dtype == dtype
    want = torch.cat([ranked([q + 1, 3], dtype, q) for q in range(hvd.size())])
    assert torch.equal(got, want)
    got = hvd.synchronize(hvd.allgather_async(x))
    assert torch.equal(got, want)
    outs = hvd.grouped_allgather([x, x[:1]])
    assert torch.equal(outs[0], want)
    assert torch.equal(outs[1], torch.cat([ranked([1, 3], dtype, q) for q in range(hvd.size())]))


@pytest.mark.parametrize("dtype", DTYPES + [torch.int16], ids=str)
def test_broadcast_every_form(dtype):
    root = hvd.size() - 1
    x = ranked([4, 3], dtype, hvd.rank())
    before = x.clone()
    want = ranked([4, 3], dtype, root)
    assert torch.equal(hvd.broadcast(x, root), want)
    assert torch.equal(x, before)
    assert torch.equal(hvd.synchronize(hvd.broadcast_async(x, root)), want)
    y = x.clone()
    assert hvd.broadcast_(y, root) is y and torch.equal(y, want)
    y = x.clone()
    hvd.synchronize(hvd.broadcast_async_(y, root))
    assert torch.equal(y, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_alltoall_with_and_without_splits(dtype):
    n, r = hvd.size(), hvd.rank()
    # Rank r sends q + 1 rows of value 10r + q to rank q.
    rows = [torch.full([q + 1, 2], 10 * r + q).to(dtype) for q in range(n)]
    x = torch.cat(rows)
    out, received = hvd.alltoall(x, splits=torch.tensor([q + 1 for q in range(n)],
                                                        dtype=torch.int32))
    assert received.tolist() == [r + 1] * n
    want = torch.cat([torch.full([r + 1, 2], 10 * q + r).to(dtype) for q in range(n)])
    assert torch.equal(out, want)
    even = torch.cat([torch.full([2], 10 * r + q).to(dtype) for q in range(n)])
    out = hvd.alltoall(even)
    assert torch.equal(out, torch.cat([torch.full([2], 10 * q + r).to(dtype) for q in range(n)]))
    out, received = hvd.synchronize(hvd.alltoall_async(even))
    assert received.tolist() == [2] * n
    # Splits as a list, adding up to fewer rows than there are: the rest is not sent.
    extra = torch.cat([x, torch.zeros([3, 2], dtype=dtype)])
    out, received = hvd.alltoall(extra, splits=[q + 1 for q in range(n)])
    assert torch.equal(out, want) and received.tolist() == [r + 1] * n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", [hvd.Sum, hvd.Average, hvd.Max], ids=["sum", "avg", "max"])
def test_reducescatter_uneven_rows(dtype, op):
    n, r = hvd.size(), hvd.rank()
    rows = 2 * n + 1  # the first rows % n ranks get one row more, as Horovod
    want = expected_reduce(op, [rows, 3], dtype)
    mine = rows // n + (1 if r < rows % n else 0)
    start = r * (rows // n) + min(r, rows % n)
    x = ranked([rows, 3], dtype, r)
    got = hvd.reducescatter(x, op=op)
    assert got.shape == (mine, 3)
    assert close(got, want[start:start + mine], dtype)
    got = hvd.synchronize(hvd.reducescatter_async(x, op=op))
    assert close(got, want[start:start + mine], dtype)
    outs = hvd.grouped_reducescatter([x, x], op=op)
    assert all(close(o, want[start:start + mine], dtype) for o in outs)


def test_gradients_of_differentiable_collectives():
    n, r = hvd.size(), hvd.rank()
    x = ranked([4, 2], torch.float64, r).requires_grad_()
    hvd.allreduce(x, op=hvd.Sum).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, n))
    x.grad = None
    hvd.allgather(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # Horovod: the average over ranks of ones
    x.grad = None
    hvd.broadcast(x, 0).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x) if r == 0 else torch.zeros_like(x))
    x.grad = None
    y = ranked([2 * n, 2], torch.float64, r).requires_grad_()
    hvd.reducescatter(y, op=hvd.Sum).sum().backward()
    assert torch.equal(y.grad, torch.full_like(y, n))
    z = ranked([2 * n], torch.float64, r).requires_grad_()
    hvd.alltoall(z).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    z.grad = None
    out, _ = hvd.alltoall(z, splits=[1] * n)  # the last n rows stay home
    out.sum().backward()
    assert torch.equal(z.grad, torch.tensor([1.0] * n + [0.0] * n, dtype=torch.float64))
    ws = [ranked([3], torch.float64, r).requires_grad_() for _ in range(2)]
    sum(o.sum() for o in hvd.grouped_allreduce(ws, op=hvd.Sum)).backward()
    assert all(torch.equal(w.grad, torch.full_like(w, n)) for w in ws)


def test_unsupported_tensors_are_refused_with_their_dtype():
    for dtype in (torch.int16, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
            hvd.allreduce(torch.zeros(3, dtype=dtype))
    with pytest.raises(TypeError, match="sparse"):
        hvd.allreduce(torch.zeros(3).to_sparse())
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.allreduce(torch.zeros(3), op=hvd.Adasum)
    with pytest.raises(ValueError):
        hvd.reducescatter(torch.tensor(1.0))
    with pytest.raises(ValueError):
        hvd.alltoall(torch.zeros(hvd.size() + 1)) if hvd.size() > 1 else hvd.alltoall(
            torch.zeros(3), splits=torch.tensor([1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_device_tensors_are_refused():
    with pytest.raises(TypeError, match="CPU"):
        hvd.allreduce(torch.zeros(3, device="cuda"))


def test_mismatched_shapes_fail_on_every_rank_naming_the_ranks():
    if hvd.size() == 1:
        pytest.skip("needs two ranks")
    x = torch.zeros([3 + (hvd.rank() == 1)])
    with pytest.raises(hvd.HorovodInternalError) as info:
        hvd.allreduce(x, name="mismatch.shape")
    assert "mismatch.shape" in str(info.value) and "rank" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    # The engine goes on after a mismatch.
    assert torch.equal(hvd.allreduce(torch.ones(2), op=hvd.Sum), torch.full([2], hvd.size() * 1.0))


def test_name_reused_while_in_flight_is_a_value_error():
    if hvd.size() == 1:
        pytest.skip("needs two ranks (alone the first call completes at once)")
    x = torch.zeros(17)
    if hvd.rank() == 0:
        h = hvd.allreduce_async(x, name="dup.name")
        with pytest.raises(ValueError, match="dup.name"):
            hvd.allreduce_async(x, name="dup.name")
    hvd.barrier()
    if hvd.rank() != 0:
        h = hvd.allreduce_async(x, name="dup.name")
    hvd.synchronize(h)


def test_process_sets_add_use_remove():
    n, r = hvd.size(), hvd.rank()
    if n == 1:
        with pytest.raises(ValueError, match="duplicate"):  # the world's ranks, as Horovod
            hvd.add_process_set([0])
        return
    evens = hvd.add_process_set([q for q in range(n) if q % 2 == 0])
    odds = hvd.ProcessSet([q for q in range(n) if q % 2 == 1]) if n > 1 else None
    if odds is not None:
        hvd.add_process_set(odds)
    mine = evens if r % 2 == 0 else odds
    assert mine.included() and mine.rank() == mine.ranks.index(r)
    assert mine.size() == len(mine.ranks)
    x = torch.full([3], float(r))
    assert torch.equal(hvd.allreduce(x, op=hvd.Sum, process_set=mine),
                       torch.full([3], float(sum(mine.ranks))))
    got = hvd.allgather(x[:1], process_set=mine)
    assert got.tolist() == [float(q) for q in mine.ranks]
    root = mine.ranks[-1]  # roots are global ranks, as in Horovod
    assert torch.equal(hvd.broadcast(x, root, process_set=mine), torch.full([3], float(root)))
    assert hvd.broadcast_object({"r": r}, root_rank=root, process_set=mine) == {"r": root}
    hvd.barrier(process_set=mine)
    with pytest.raises(ValueError, match="duplicate"):
        hvd.add_process_set(list(evens.ranks))
    assert hvd.remove_process_set(evens)
    if odds is not None:
        assert hvd.remove_process_set(odds)
    assert evens.process_set_id is None and not hvd.remove_process_set(hvd.global_process_set)


def test_join_returns_the_last_rank():
    n, r = hvd.size(), hvd.rank()
    if r == 0:
        last = hvd.join()
    else:
        out = hvd.allreduce(torch.ones(4), op=hvd.Sum, name="join.tensor")
        assert torch.equal(out, torch.full([4], float(n - 1)))  # rank 0 adds zeros
        last = hvd.join()
    assert hvd.allgather_object(last) == [last] * n


def test_timeline_is_written(tmp_path):
    path = tmp_path / f"timeline.{hvd.rank()}.json"
    hvd.start_timeline(str(path), mark_cycles=True)
    hvd.allreduce(torch.ones(3), name="test_allreduce")
    hvd.stop_timeline()
    assert "test_allreduce" in path.read_text()


def test_objects_round_trip():
    r = hvd.rank()
    obj = {"rank": r, "items": list(range(r)), ("t", 1): "x" * r}
    assert hvd.allgather_object(obj) == [
        {"rank": q, "items": list(range(q)), ("t", 1): "x" * q} for q in range(hvd.size())]
    assert hvd.broadcast_object(obj if r == 0 else None, root_rank=0) == {
        "rank": 0, "items": [], ("t", 1): ""}


def test_many_unnamed_calls_agree_across_ranks():
    for dtype, dim in itertools.product([torch.float32, torch.int64], [1, 2, 3]):
        x = ranked([5] * dim, dtype, hvd.rank())
        assert close(hvd.allreduce(x, op=hvd.Sum), expected_reduce(hvd.Sum, [5] * dim, dtype),
                     dtype)


def test_init_registers_process_sets_and_grouped_async_forms():
    n, r = hvd.size(), hvd.rank()
    if n == 1:
        pytest.skip("a set other than the world needs two ranks")
    first = hvd.ProcessSet(range(n - 1))  # every rank but the last
    hvd.init(process_sets=[first])  # already initialized: registers the set only
    assert first.process_set_id not in (None, 0)
    hvd.init(process_sets=[first])  # the same object again: nothing to do
    if first.included():
        xs = [ranked([2 * (n - 1), 2], torch.int32, r), ranked([n - 1], torch.float32, r)]
        got = hvd.synchronize(hvd.grouped_reducescatter_async(xs, op=hvd.Sum, process_set=first))
        want = [sum(ranked(x.shape, x.dtype, q) for q in first.ranks) for x in xs]
        rows = [x.shape[0] // (n - 1) for x in xs]
        me = first.rank()
        assert all(torch.equal(g, w[me * k:(me + 1) * k]) for g, w, k in zip(got, want, rows))
        got = hvd.synchronize(hvd.grouped_allgather_async(xs, process_set=first))
        assert all(torch.equal(g, torch.cat([ranked(x.shape, x.dtype, q) for q in first.ranks]))
                   for g, x in zip(got, xs))
    else:
        assert first.rank() == -1
    assert hvd.remove_process_set(first)


def test_scalars_travel_as_scalars():
    x = torch.tensor(float(hvd.rank() + 1))
    out = hvd.allreduce(x, op=hvd.Sum, name="scalar.metric")
    assert out.shape == () and out.item() == hvd.size() * (hvd.size() + 1) / 2
    assert hvd.broadcast(torch.tensor(hvd.rank()), 0).item() == 0


def test_elastic_is_refused_with_a_message():
    with pytest.raises(NotImplementedError, match="elastic"):
        hvd.elastic.run(lambda state: None)
