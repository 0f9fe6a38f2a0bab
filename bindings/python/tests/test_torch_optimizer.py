"""skyring.torch training helpers under mpirun (1, 2, 4 ranks): DistributedOptimizer,
broadcast_parameters / broadcast_optimizer_state, SyncBatchNorm, compression objects.

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 SKYRING_STALL_SHUTDOWN_S=30 \
      timeout 600 mpirun --oversubscribe -np 4 /usr/bin/python3 -m pytest -q -x \
      bindings/python/tests/test_torch_optimizer.py

The exactness tests use float64, integer data and power-of-two batch sizes and learning
rates, so the distributed result equals one process's on the whole batch bit for bit.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import skyring.torch as hvd

BATCH = 16  # divisible by every world size the suite runs with (1, 2, 4, 8, 16)


@pytest.fixture(scope="module", autouse=True)
def initialized():
    hvd.init()
    if BATCH % hvd.size():
        pytest.skip(f"the batch of {BATCH} does not split over {hvd.size()} ranks")
    yield
    hvd.barrier()


def global_batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (BATCH, 6), generator=g).double()
    y = torch.randint(-3, 4, (BATCH, 2), generator=g).double()
    return x, y


def shard(t):
    per = t.shape[0] // hvd.size()
    return t[hvd.rank() * per:(hvd.rank() + 1) * per]


def make_model():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape).double() / 4)
    return model


def train(model, optimizer, steps, batch_of, passes=1):
    for step in range(steps):
        optimizer.zero_grad()
        for k in range(passes):
            x, y = batch_of(step * passes + k)
            F.mse_loss(model(x), y, reduction="sum").div(BATCH).backward()
        optimizer.step()


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same_on_every_rank(tensors):
    for t in tensors:
        gathered = hvd.allgather(t.unsqueeze(0))
        assert all(torch.equal(g, t) for g in gathered)


@pytest.mark.parametrize("passes", [1, 3])
def test_distributed_optimizer_equals_one_process_on_the_whole_batch(passes):
    model = make_model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5),
                                   named_parameters=model.named_parameters(),
                                   backward_passes_per_step=passes)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    # Sum over this rank's shard / BATCH, averaged over ranks: the gradient of the loss
    # summed over the whole batch / (BATCH * size) -- scaled back by size below.
    model_ref = make_model()
    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.5 / hvd.size())

    def local(i):
        x, y = global_batch(i)
        return shard(x), shard(y)

    # One step stays within float64's 53 bits, so it is exact; later steps round (in a
    # different order than the reference's sums) and are compared to 1e-12.
    train(model, opt, 1, local, passes)
    train(model_ref, opt_ref, 1, global_batch, passes)
    got = params_of(model)
    assert_same_on_every_rank(got)
    for a, b in zip(got, params_of(model_ref)):
        assert torch.equal(a, b)
    train(model, opt, 2, lambda i: local(i + passes), passes)
    train(model_ref, opt_ref, 2, lambda i: global_batch(i + passes), passes)
    got = params_of(model)
    assert_same_on_every_rank(got)
    for a, b in zip(got, params_of(model_ref)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_optimizer_options_sum_predivide_groups_fp16():
    n = hvd.size()
    for kwargs in ({"op": hvd.Sum}, {"gradient_predivide_factor": 2.0},
                   {"groups": 1}, {"compression": hvd.Compression.fp16},
                   {"compression": hvd.Compression.int8}):
        model = make_model()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.25),
                                       named_parameters=model.named_parameters(), **kwargs)
        x, y = global_batch(1)
        # The local gradients, from a twin without hooks: the optimizer's allreduces start
        # during backward and change the gradients in place.
        twin = make_model()
        F.mse_loss(twin(shard(x)), shard(y), reduction="sum").backward()
        local = [p.grad for p in twin.parameters()]
        F.mse_loss(model(shard(x)), shard(y), reduction="sum").backward()
        opt.synchronize()
        summed = [hvd.allreduce(g, op=hvd.Sum) for g in local]
        scale = 1 if kwargs.get("op") == hvd.Sum else n
        for p, s in zip(model.parameters(), summed):
            tol = 1e-2 if "compression" in kwargs else 0
            assert torch.allclose(p.grad, s / scale, atol=tol, rtol=tol), kwargs
        with opt.skip_synchronize():
            opt.step()
        assert_same_on_every_rank(params_of(model))


def test_optimizer_rejects_what_horovod_rejects():
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        hvd.DistributedOptimizer(sgd, named_parameters=list(model.named_parameters())[:1])
    with pytest.raises(ValueError):
        hvd.DistributedOptimizer(sgd, named_parameters=[("w", p) for p in model.parameters()])
    with pytest.raises(ValueError):
        hvd.DistributedOptimizer(sgd, backward_passes_per_step=0)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.DistributedOptimizer(sgd, op=hvd.Adasum)


def test_synchronize_then_step_warns_and_zero_grad_before_step_raises():
    if hvd.size() == 1:
        pytest.skip("hooks are installed with two ranks or more, as in Horovod")
    model = make_model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    x, y = global_batch(2)
    F.mse_loss(model(shard(x)), shard(y)).backward()
    with pytest.raises(AssertionError):
        opt.zero_grad()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        opt.step()
    assert any("skip_synchronize" in str(w.message) for w in ws)


def test_broadcast_parameters_and_optimizer_state():
    r = hvd.rank()
    torch.manual_seed(100 + r)  # every rank starts different
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1), betas=(0.8, 0.9 + r / 1000))
    F.mse_loss(model(torch.randn(4, 5)), torch.randn(4, 3)).backward()
    opt.step()  # state (exp_avg, step) differs per rank
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    assert_same_on_every_rank(params_of(model))
    state = opt.state_dict()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.8, 0.9))
    for s in state["state"].values():
        assert_same_on_every_rank([v if torch.is_tensor(v) else torch.tensor(float(v))
                                   for v in s.values()])
    # named_parameters() and a fresh optimizer (state made by a local step) work too.
    hvd.broadcast_parameters(list(model.named_parameters()), root_rank=hvd.size() - 1)
    fresh = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                     named_parameters=model.named_parameters())
    hvd.broadcast_optimizer_state(fresh, root_rank=0)


@pytest.mark.parametrize("shape", [(BATCH, 3), (BATCH, 3, 5), (BATCH, 3, 2, 2)], ids=str)
def test_sync_batch_norm_matches_batch_norm_on_the_whole_batch(shape):
    torch.manual_seed(3)
    x = torch.randn(*shape, dtype=torch.float64)
    sync = hvd.SyncBatchNorm(3).double()
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(3).double()
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
            m.bias.copy_(torch.tensor([0.1, 0.0, 0.3]))
    xs = shard(x).clone().requires_grad_()
    xr = x.clone().requires_grad_()
    ys, yr = sync(xs), ref(xr)
    assert torch.allclose(ys, shard(yr), atol=1e-10)
    assert torch.allclose(sync.running_mean, ref.running_mean, atol=1e-12)
    assert torch.allclose(sync.running_var, ref.running_var, atol=1e-12)
    w = torch.arange(yr.numel(), dtype=torch.float64).reshape(yr.shape) % 7
    (ys * shard(w)).sum().backward()
    (yr * w).sum().backward()
    assert torch.allclose(xs.grad, shard(xr.grad), atol=1e-10)
    grads = [hvd.allreduce(g, op=hvd.Sum) for g in (sync.weight.grad, sync.bias.grad)]
    assert torch.allclose(grads[0], ref.weight.grad, atol=1e-10)
    assert torch.allclose(grads[1], ref.bias.grad, atol=1e-10)
    sync.eval()
    assert torch.allclose(sync(shard(x)), ref.eval()(shard(x)), atol=1e-10)


def test_compression_objects():
    t = torch.ones(4, dtype=torch.float64)
    c, ctx = hvd.Compression.fp16.compress(t)
    assert c.dtype == torch.float16 and hvd.Compression.fp16.decompress(c, ctx).dtype == t.dtype
    c, ctx = hvd.Compression.none.compress(t)
    assert c is t
    assert hvd.Compression.topk(0.001).spec == "topk:0.001"
    assert hvd.Compression.int8(block=64).spec == "int8:block=64"
    assert hvd.Compression.powersgd.spec == "powersgd:4"
    x = torch.full([300], float(hvd.rank() + 1))
    for codec in (hvd.Compression.int8, hvd.Compression.bf16, hvd.Compression.default):
        out = hvd.allreduce(x, op=hvd.Sum, compression=codec)
        assert torch.allclose(out, torch.full([300], hvd.size() * (hvd.size() + 1) / 2.0),
                              rtol=2e-2)


def test_zero_grad_set_to_none_and_parameters_unused_on_some_ranks():
    torch.manual_seed(11)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)})
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        x = torch.full([2, 3], float(step + 1))
        out = model["a"](x)
        if hvd.rank() % 2 == 1:  # "b" gets no gradient here: zeros are sent for it
            out = model["b"](out)
        out.sum().backward()
        opt.step()
        assert_same_on_every_rank(params_of(model))
