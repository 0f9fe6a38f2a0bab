"""horovod.torch.mpi_ops, second half: allgather, broadcast, alltoall, reducescatter and their
grouped and differentiable forms. Re-exported by mpi_ops (import from there or from
skyring.torch).

Data movement (allgather, broadcast, alltoall) carries any dtype, as raw bytes where the core
has no name for it (int16, bool, complex); reductions refuse those. Results of allgather,
alltoall and reducescatter share memory with the buffers the engine allocated. Grouped
allgather and reducescatter submit one call per tensor (named `<name>.<i>`) under one handle.
"""

import numbers

import torch

from skyring import _core
from skyring.torch import _plumbing as _p
from skyring.torch._basics import Average, Sum, global_process_set, rank
from skyring.torch.compression import Compression
from skyring.torch.mpi_ops import (_reduction_args, _scale_, allreduce, grouped_allreduce,
                                   synchronize)

__all__ = [
    "allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "alltoall",
    "alltoall_async", "reducescatter", "reducescatter_async", "grouped_reducescatter",
    "grouped_reducescatter_async", "HorovodAllgather", "HorovodGroupedAllgather",
    "HorovodBroadcast", "HorovodAlltoall", "HorovodReducescatter",
    "HorovodGroupedReducescatter",
]


def _need_dim(tensor, what):
    if tensor.dim() == 0:
        raise ValueError(f"{what}: a tensor with at least one dimension is needed, got a scalar "
                         "(0-d) tensor; use tensor.reshape(1)")


# ----------------------------------------------------------------------------- allgather

def _allgather_call(tensor, name, ps):
    """(core call, keep, finisher) of one allgather."""
    _p.check_tensor(tensor, "allgather")
    _need_dim(tensor, "allgather")
    work = _p.contiguous(tensor)
    ptr, shape, dtype, byte_view = _p.describe(work, "allgather", movement=True)
    call = (_core.allgather_async, (name, ptr, shape, dtype, ps), {})
    return call, (tensor, work), (tensor.dtype, byte_view)


def allgather_async(tensor, name=None, process_set=global_process_set):
    """Starts gathering tensor from every process along dimension 0 (sizes along it may
    differ); returns a handle."""
    ps = _p.set_id(process_set)
    if name is None:
        name = _p.auto_name("allgather", ps)
    call, keep, (dtype, byte_view) = _allgather_call(tensor, name, ps)
    (core,) = _p.submit_all([call], keep)
    return _p.register([core], keep, lambda: _p.output_tensor(core, dtype, byte_view))


class HorovodAllgather(torch.autograd.Function):
    """An autograd function that performs allgather on a tensor."""

    @staticmethod
    def forward(ctx, tensor, name, process_set):
        ctx.dim = tensor.shape[0] if tensor.dim() else 1
        ctx.process_set = process_set
        return synchronize(allgather_async(tensor, name, process_set))

    @staticmethod
    def backward(ctx, grad_output):
        grad_reduced = allreduce(grad_output, op=Average, process_set=ctx.process_set)
        dim = allgather(torch.IntTensor([ctx.dim]), process_set=ctx.process_set)
        r = ctx.process_set.rank()
        offset = int(torch.sum(dim.narrow(0, 0, r)).item()) if r != 0 else 0
        return grad_reduced.narrow(0, offset, ctx.dim), None, None


def allgather(tensor, name=None, process_set=global_process_set):
    """Concatenates tensor from every process along dimension 0; differentiable."""
    return HorovodAllgather.apply(tensor, name, process_set)


def grouped_allgather_async(tensors, name=None, process_set=global_process_set):
    """Starts allgathers of a list of tensors under one handle (result: a tuple)."""
    ps = _p.set_id(process_set)
    base = name if name is not None else _p.auto_name("grouped_allgather", ps)
    calls, keep, kinds = [], [], []
    for i, t in enumerate(tensors):
        call, k, kind = _allgather_call(t, f"{base}.{i}", ps)
        calls.append(call)
        keep.append(k)
        kinds.append(kind)
    cores = _p.submit_all(calls, keep)
    return _p.register(cores, keep, lambda: tuple(
        _p.output_tensor(c, dtype, bv) for c, (dtype, bv) in zip(cores, kinds)))


class HorovodGroupedAllgather(torch.autograd.Function):
    """An autograd function that performs allgather on a list of tensors."""

    @staticmethod
    def forward(ctx, name, process_set, *tensors):
        ctx.dims = [t.shape[0] for t in tensors]
        ctx.process_set = process_set
        return synchronize(grouped_allgather_async(list(tensors), name, process_set))

    @staticmethod
    def backward(ctx, *grad_output):
        grad_reduced = grouped_allreduce(list(grad_output), op=Average,
                                         process_set=ctx.process_set)
        dims = grouped_allgather([torch.IntTensor([d]) for d in ctx.dims],
                                 process_set=ctx.process_set)
        r = ctx.process_set.rank()
        offsets = [int(torch.sum(d.narrow(0, 0, r)).item()) if r != 0 else 0 for d in dims]
        return (None, None, *[g.narrow(0, o, d)
                              for g, o, d in zip(grad_reduced, offsets, ctx.dims)])


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    """Allgathers each tensor of a list; returns a list; differentiable."""
    if not tensors:
        return []
    return list(HorovodGroupedAllgather.apply(name, process_set, *tensors))


# ----------------------------------------------------------------------------- broadcast

def _broadcast_async(tensor, output, root_rank, name, process_set):
    ps = _p.set_id(process_set)
    _p.check_tensor(tensor, "broadcast")
    root = process_set._set_rank_of(root_rank)
    _p.describe(tensor, "broadcast", movement=True)
    if output is not tensor:
        output.copy_(tensor)
    work = _p.contiguous(output)
    ptr, shape, dtype, _ = _p.describe(work, "broadcast", movement=True)
    if name is None:
        name = _p.auto_name("broadcast", ps)
    (core,) = _p.submit_all([(_core.broadcast_async, (name, ptr, shape, dtype, root, ps), {})],
                            (tensor, output, work))

    def finish():
        if work is not output:
            output.copy_(work)
        return output

    return _p.register([core], (tensor, output, work), finish)


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set):
    """Starts broadcasting root_rank's tensor (a global rank, also with a process set) into a
    new tensor; the input is not modified. Returns a handle."""
    output = _p.new_output(tensor, "broadcast")
    return _broadcast_async(tensor, output, root_rank, name, process_set)


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set):
    """Starts an in-place broadcast from root_rank; returns a handle."""
    return _broadcast_async(tensor, tensor, root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    """In-place broadcast; returns tensor."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


class HorovodBroadcast(torch.autograd.Function):
    """An autograd function that broadcasts a tensor."""

    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root_rank = root_rank
        ctx.process_set = process_set
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))

    @staticmethod
    def backward(ctx, grad_output):
        grad_reduced = allreduce(grad_output, op=Average, process_set=ctx.process_set)
        if rank() != ctx.root_rank:
            grad_reduced *= 0
        return grad_reduced, None, None, None


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Returns root_rank's tensor on every process; differentiable."""
    return HorovodBroadcast.apply(tensor, root_rank, name, process_set)


# ------------------------------------------------------------------------------ alltoall

def _split_list(splits, rows, n):
    if splits is None:
        if n and rows % n:
            raise ValueError(f"alltoall: without splits the first dimension ({rows}) must be "
                             f"divisible by the number of processes ({n})")
        return []
    if isinstance(splits, torch.Tensor):
        if splits.dtype.is_floating_point or splits.dtype.is_complex or \
                splits.dtype == torch.bool:
            raise ValueError(f"alltoall: splits must hold integers (int32), got {splits.dtype}")
        values = splits.cpu().reshape(-1).tolist()
    else:
        values = list(splits)
        if any(not isinstance(v, numbers.Integral) for v in values):
            raise ValueError(f"alltoall: splits must be integers, got {values}")
        values = [int(v) for v in values]
    if len(values) != n:
        raise ValueError(f"alltoall: splits has {len(values)} entries for {n} processes")
    # Horovod sends the first sum(splits) rows and refuses only more than there are.
    if any(v < 0 for v in values) or sum(values) > rows:
        raise ValueError(f"alltoall: splits {values} must be non-negative and add up to at "
                         f"most the first dimension of the tensor ({rows})")
    return values


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set):
    """Starts an alltoall: splits[i] rows (dimension 0) go to process i (splits=None: equal
    parts). synchronize() returns (output, received_splits)."""
    ps = _p.set_id(process_set)
    _p.check_tensor(tensor, "alltoall")
    _need_dim(tensor, "alltoall")
    split_list = _split_list(splits, tensor.shape[0], process_set.size())
    splits_dtype = splits.dtype if isinstance(splits, torch.Tensor) else torch.int32
    work = _p.contiguous(tensor)
    if split_list and sum(split_list) < tensor.shape[0]:
        work = work[:sum(split_list)]
    ptr, shape, dtype, byte_view = _p.describe(work, "alltoall", movement=True)
    if name is None:
        name = _p.auto_name("alltoall", ps)
    (core,) = _p.submit_all(
        [(_core.alltoall_async, (name, ptr, shape, dtype, split_list, ps), {})], (tensor, work))

    def finish():
        received = _p.output_meta(core, "received_splits", "received_splits")
        received = torch.tensor(list(received), dtype=splits_dtype)
        return _p.output_tensor(core, tensor.dtype, byte_view), received

    return _p.register([core], (tensor, work), finish)


class HorovodAlltoall(torch.autograd.Function):
    """An autograd function that performs alltoall on a tensor."""

    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        output, received_splits = synchronize(alltoall_async(tensor, splits, name, process_set))
        ctx.process_set = process_set
        ctx.recvsplits = received_splits
        ctx.rows = tensor.shape[0]
        if splits is None:
            return output
        ctx.mark_non_differentiable(received_splits)
        return output, received_splits

    @staticmethod
    def backward(ctx, grad_output, *dead_gradients):
        grad_wrt_tensor, _ = synchronize(alltoall_async(grad_output.contiguous(), ctx.recvsplits,
                                                        process_set=ctx.process_set))
        if grad_wrt_tensor.shape[0] < ctx.rows:  # rows past sum(splits) were not sent
            pad = grad_wrt_tensor.new_zeros([ctx.rows - grad_wrt_tensor.shape[0]] +
                                            list(grad_wrt_tensor.shape[1:]))
            grad_wrt_tensor = torch.cat([grad_wrt_tensor, pad])
        return grad_wrt_tensor, None, None, None


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Scatters slices of tensor to every process and gathers theirs; returns the output,
    and (output, received_splits) when splits is given; differentiable."""
    return HorovodAlltoall.apply(tensor, splits, name, process_set)


# ------------------------------------------------------------------------- reducescatter

def _reducescatter_call(tensor, name, op, ps, prescale_factor, postscale_factor):
    _p.check_tensor(tensor, "reducescatter")
    _p.describe(tensor, "reducescatter", movement=False)
    _need_dim(tensor, "reducescatter")
    work = _p.contiguous(tensor)
    if not tensor.dtype.is_floating_point and (prescale_factor != 1.0 or postscale_factor != 1.0):
        work = tensor.clone(memory_format=torch.contiguous_format)  # the input stays unscaled
    core_op, pre, post, post_here = _reduction_args(work, op, prescale_factor, postscale_factor)
    ptr, shape, dtype, _ = _p.describe(work, "reducescatter", movement=False)
    call = (_core.reducescatter_async, (name, ptr, shape, dtype, core_op, pre, post, ps), {})
    return call, (tensor, work), post_here


def _reducescatter_result(core, dtype, post_here):
    out = _p.output_tensor(core, dtype, False)
    _scale_(out, post_here)
    return out


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set,
                        prescale_factor=1.0, postscale_factor=1.0):
    """Starts reducing tensor over the processes and scattering dimension 0 (the first
    rows % size processes get one row more); returns a handle."""
    ps = _p.set_id(process_set)
    if name is None:
        name = _p.auto_name("reducescatter", ps)
    call, keep, post_here = _reducescatter_call(tensor, name, op, ps, prescale_factor,
                                                postscale_factor)
    (core,) = _p.submit_all([call], keep)
    return _p.register([core], keep,
                       lambda: _reducescatter_result(core, tensor.dtype, post_here))


def _reducescatter_grad(ctx, grads):
    scale = ctx.process_set.size() if ctx.op == Sum else 1
    scale *= ctx.prescale_factor * ctx.postscale_factor
    return [g * scale if scale != 1 else g for g in grads]


class HorovodReducescatter(torch.autograd.Function):
    """An autograd function that performs reducescatter on a tensor."""

    @staticmethod
    def forward(ctx, tensor, name, op, process_set, prescale_factor, postscale_factor):
        ctx.op = op
        ctx.process_set = process_set
        ctx.prescale_factor = prescale_factor
        ctx.postscale_factor = postscale_factor
        return synchronize(reducescatter_async(tensor, name, op, process_set, prescale_factor,
                                               postscale_factor))

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = _reducescatter_grad(ctx, [grad_output])
        return allgather(grad, process_set=ctx.process_set), None, None, None, None, None


def reducescatter(tensor, name=None, compression=Compression.none, op=Average,
                  process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    """Reduces tensor over the processes and returns this process's rows of the result;
    differentiable."""
    tensor_compressed, ctx = compression.compress(tensor)
    reduced = HorovodReducescatter.apply(tensor_compressed, name, op, process_set,
                                         prescale_factor, postscale_factor)
    return compression.decompress(reduced, ctx)


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=global_process_set,
                                prescale_factor=1.0, postscale_factor=1.0):
    """Starts a reducescatter of each tensor of a list under one handle (result: a tuple)."""
    ps = _p.set_id(process_set)
    base = name if name is not None else _p.auto_name("grouped_reducescatter", ps)
    calls, keep, posts = [], [], []
    for i, t in enumerate(tensors):
        call, k, post_here = _reducescatter_call(t, f"{base}.{i}", op, ps, prescale_factor,
                                                 postscale_factor)
        calls.append(call)
        keep.append(k)
        posts.append((t.dtype, post_here))
    cores = _p.submit_all(calls, keep)
    return _p.register(cores, keep, lambda: tuple(
        _reducescatter_result(c, dtype, post) for c, (dtype, post) in zip(cores, posts)))


class HorovodGroupedReducescatter(torch.autograd.Function):
    """An autograd function that performs reducescatter on a list of tensors."""

    @staticmethod
    def forward(ctx, name, op, process_set, prescale_factor, postscale_factor, *tensors):
        ctx.op = op
        ctx.process_set = process_set
        ctx.prescale_factor = prescale_factor
        ctx.postscale_factor = postscale_factor
        return synchronize(grouped_reducescatter_async(list(tensors), name, op, process_set,
                                                       prescale_factor, postscale_factor))

    @staticmethod
    def backward(ctx, *grad_output):
        grads = _reducescatter_grad(ctx, grad_output)
        return (None, None, None, None, None,
                *grouped_allgather(grads, process_set=ctx.process_set))


def grouped_reducescatter(tensors, name=None, compression=Compression.none, op=Average,
                          process_set=global_process_set, prescale_factor=1.0,
                          postscale_factor=1.0):
    """Reducescatters each tensor of a list; returns a list; differentiable."""
    if not tensors:
        return []
    compressed, ctxs = zip(*[compression.compress(t) for t in tensors])
    reduced = HorovodGroupedReducescatter.apply(name, op, process_set, prescale_factor,
                                                postscale_factor, *compressed)
    return [compression.decompress(t, ctx) for t, ctx in zip(reduced, ctxs)]
