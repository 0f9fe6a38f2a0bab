"""horovod.torch.mpi_ops over skyring's engine: the collectives, their `_` (in place) and
`_async` forms, and the differentiable versions (autograd Functions, as Horovod's).

Semantics follow Horovod: calls are keyed by name (name=None: a name counted per operation
and process set); an `_async` call returns an int handle for poll()/synchronize(); the input
of an out-of-place call is not modified. Differences (docs/python.md): host tensors only;
Adasum is refused; integer tensors are scaled (prescale/postscale) here in float64, as
Horovod does, because the engine scales floating-point tensors only.
"""

import torch

from skyring import _core
from skyring.torch import _plumbing as _p
from skyring.torch._basics import (  # noqa: F401  (re-exported, as Horovod's mpi_ops does)
    Adasum, Average, HorovodInternalError, Max, Min, Product, ProcessSet, Sum, _op_name,
    add_process_set, ccl_built, cross_rank, cross_size, cuda_built, ddl_built, global_process_set,
    gloo_built, gloo_enabled, handle_average_backwards_compatibility, init, is_homogeneous,
    is_initialized, local_rank, local_size, mpi_built, mpi_enabled, mpi_threads_supported,
    nccl_built, rank, remove_process_set, rocm_built, shutdown, size, start_timeline,
    stop_timeline)
from skyring.torch.compression import Compression, wire_spec

poll = _p.poll
synchronize = _p.synchronize


def _scaling_in_python(tensor, prescale_factor, postscale_factor):
    # The engine scales floating-point tensors only; Horovod scales integers in float64.
    return not tensor.dtype.is_floating_point and (prescale_factor != 1.0 or
                                                   postscale_factor != 1.0)


def _scale_(tensor, factor):
    if factor != 1.0:
        tensor.copy_((tensor.to(torch.float64) * factor).to(tensor.dtype))


def _reduction_args(tensor, op, prescale_factor, postscale_factor):
    """(core op, core prescale, core postscale, postscale left to Python); applies an
    integer tensor's prescale here, in place."""
    core_op = _op_name(op)
    if _scaling_in_python(tensor, prescale_factor, postscale_factor):
        _scale_(tensor, prescale_factor)
        return core_op, 1.0, 1.0, postscale_factor
    return core_op, float(prescale_factor), float(postscale_factor), 1.0


# ----------------------------------------------------------------------------- allreduce

def _allreduce_async(tensor, output, name, op, prescale_factor, postscale_factor, process_set,
                     compression=""):
    """Reduces tensor into output (output is tensor for the in-place forms)."""
    ps = _p.set_id(process_set)
    _p.check_tensor(tensor, "allreduce")
    _p.describe(tensor, "allreduce", movement=False)
    if output is not tensor:
        output.copy_(tensor)
    work = _p.contiguous(output)  # a copy only for an in-place call on a non-contiguous tensor
    core_op, pre, post, post_here = _reduction_args(work, op, prescale_factor, postscale_factor)
    ptr, shape, dtype, _ = _p.describe(work, "allreduce", movement=False)
    if name is None:
        name = _p.auto_name("allreduce", ps)
    core = _p.submit(_core.allreduce_async, name, ptr, shape, dtype, core_op, pre, post,
                     compression, ps)

    def finish():
        _scale_(work, post_here)
        if work is not output:
            output.copy_(work)
        return output

    return _p.register([core], (tensor, output, work), finish)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=global_process_set,
                    compression=Compression.none):
    """Starts an allreduce of tensor (not modified) and returns a handle; synchronize(handle)
    returns the result. op defaults to Average. `compression` (skyring's) takes a wire codec
    such as Compression.int8, applied on the cross-cloud hop."""
    op = handle_average_backwards_compatibility(op, average)
    output = _p.new_output(tensor, "allreduce")
    return _allreduce_async(tensor, output, name, op, prescale_factor, postscale_factor,
                            process_set, wire_spec(compression))


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=global_process_set,
                     compression=Compression.none):
    """Starts an in-place allreduce of tensor and returns a handle."""
    op = handle_average_backwards_compatibility(op, average)
    return _allreduce_async(tensor, tensor, name, op, prescale_factor, postscale_factor,
                            process_set, wire_spec(compression))


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=global_process_set):
    """In-place allreduce; returns tensor."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor,
                                        postscale_factor, process_set))


class HorovodAllreduce(torch.autograd.Function):
    """An autograd function that performs allreduce on a tensor."""

    @staticmethod
    def forward(ctx, tensor, average, name, op, prescale_factor, postscale_factor, process_set,
                spec=""):
        ctx.average = average
        ctx.op = op
        ctx.prescale_factor = prescale_factor
        ctx.postscale_factor = postscale_factor
        ctx.process_set = process_set
        op = handle_average_backwards_compatibility(op, average)
        output = _p.new_output(tensor, "allreduce")
        return synchronize(_allreduce_async(tensor, output, name, op, prescale_factor,
                                            postscale_factor, process_set, spec))

    @staticmethod
    def backward(ctx, grad_output):
        return allreduce(grad_output, average=ctx.average, op=ctx.op,
                         prescale_factor=ctx.prescale_factor,
                         postscale_factor=ctx.postscale_factor,
                         process_set=ctx.process_set), None, None, None, None, None, None, None


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """Averages (op=Average, the default) or otherwise reduces tensor over the processes and
    returns the result; differentiable. Horovod's compressors cast before sending; skyring's
    wire codecs (Compression.int8, ...) compress the cross-cloud hop only."""
    tensor_compressed, ctx = compression.compress(tensor)
    reduced = HorovodAllreduce.apply(tensor_compressed, average, name, op, prescale_factor,
                                     postscale_factor, process_set, wire_spec(compression))
    return compression.decompress(reduced, ctx)


# --------------------------------------------------------------------- grouped allreduce

def _grouped_allreduce_async(tensors, outputs, name, op, prescale_factor, postscale_factor,
                             process_set, compression=""):
    ps = _p.set_id(process_set)
    tensors = list(tensors)
    for t in tensors:
        _p.check_tensor(t, "grouped_allreduce")
        _p.describe(t, "grouped_allreduce", movement=False)
    if name is None:
        name = _p.auto_name("grouped_allreduce", ps)
    if not tensors:
        return _p.register([], (), lambda: ())
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError("grouped_allreduce: every tensor of a group must have one dtype; got "
                         + ", ".join(str(t.dtype) for t in tensors))
    works = []
    for t, out in zip(tensors, outputs):
        if out is not t:
            out.copy_(t)
        works.append(_p.contiguous(out))
    core_op, pre, post, post_here = _group_reduction_args(works, op, prescale_factor,
                                                          postscale_factor)
    ptrs = [w.data_ptr() for w in works]
    shapes = [list(w.shape) for w in works]
    dtype = _p.describe(works[0], "grouped_allreduce", movement=False)[2]
    core = _p.submit(_core.grouped_allreduce_async, name, ptrs, shapes, dtype, core_op, pre,
                     post, compression, ps)

    def finish():
        for w, out in zip(works, outputs):
            _scale_(w, post_here)
            if w is not out:
                out.copy_(w)
        return tuple(outputs)

    return _p.register([core], (tensors, outputs, works), finish)


def _group_reduction_args(works, op, prescale_factor, postscale_factor):
    core_op = _op_name(op)
    if _scaling_in_python(works[0], prescale_factor, postscale_factor):
        for w in works:
            _scale_(w, prescale_factor)
        return core_op, 1.0, 1.0, postscale_factor
    return core_op, float(prescale_factor), float(postscale_factor), 1.0


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set,
                            compression=Compression.none):
    """Starts an allreduce of a list of tensors (one dtype) as one unit; returns a handle
    whose result is a tuple of tensors."""
    op = handle_average_backwards_compatibility(op, average)
    outputs = [_p.new_output(t, "grouped_allreduce") for t in tensors]
    return _grouped_allreduce_async(tensors, outputs, name, op, prescale_factor,
                                    postscale_factor, process_set, wire_spec(compression))


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set,
                             compression=Compression.none):
    """In-place form of grouped_allreduce_async."""
    op = handle_average_backwards_compatibility(op, average)
    return _grouped_allreduce_async(tensors, list(tensors), name, op, prescale_factor,
                                    postscale_factor, process_set, wire_spec(compression))


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                       postscale_factor=1.0, process_set=global_process_set):
    """In-place grouped allreduce; returns the tensors."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


class HorovodGroupedAllreduce(torch.autograd.Function):
    """An autograd function that performs allreduce on a list of tensors."""

    @staticmethod
    def forward(ctx, average, name, op, prescale_factor, postscale_factor, process_set, spec,
                *tensors):
        ctx.average = average
        ctx.op = op
        ctx.prescale_factor = prescale_factor
        ctx.postscale_factor = postscale_factor
        ctx.process_set = process_set
        op = handle_average_backwards_compatibility(op, average)
        outputs = [_p.new_output(t, "grouped_allreduce") for t in tensors]
        return synchronize(_grouped_allreduce_async(tensors, outputs, name, op, prescale_factor,
                                                    postscale_factor, process_set, spec))

    @staticmethod
    def backward(ctx, *grad_output):
        grad_reduced = grouped_allreduce(list(grad_output), average=ctx.average, op=ctx.op,
                                         prescale_factor=ctx.prescale_factor,
                                         postscale_factor=ctx.postscale_factor,
                                         process_set=ctx.process_set)
        return (None, None, None, None, None, None, None, *grad_reduced)


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    """Reduces a list of tensors as one unit and returns a list; differentiable."""
    if not tensors:
        return []
    tensors_compressed, ctxs = zip(*[compression.compress(t) for t in tensors])
    reduced = HorovodGroupedAllreduce.apply(average, name, op, prescale_factor, postscale_factor,
                                            process_set, wire_spec(compression),
                                            *tensors_compressed)
    return [compression.decompress(t, ctx) for t, ctx in zip(reduced, ctxs)]


def sparse_allreduce_async(tensor, name, op, process_set=global_process_set):
    """Reduces a sparse tensor by allgathering its indices and values (as Horovod); returns
    a callable that waits and gives the result."""
    t = tensor
    indices_handle = allgather_async(t._indices().transpose(0, 1).contiguous(),
                                     name=f"{name}.indices", process_set=process_set)
    values_handle = allgather_async(t._values(), name=f"{name}.values", process_set=process_set)

    def handle():
        values = synchronize(values_handle)
        indices = synchronize(indices_handle)
        values = (values / process_set.size()) if op == Average else values
        if indices.dim() == 0 or values.dim() == 0:
            return t.new().resize_as_(t)
        return t.new(indices.transpose(0, 1), values, t.size())

    return handle


from skyring.torch import _gather_ops  # noqa: E402  (it imports from this module)
from skyring.torch._gather_ops import *  # noqa: E402,F401,F403  (the rest of the API)
from skyring.torch._gather_ops import allgather_async  # noqa: E402


def join(device=-1) -> int:
    """Says this rank has no more data; returns the last rank to join once all have. Until
    then this rank takes part in the others' allreduces with zeros (device is ignored)."""
    _p.set_id(global_process_set)
    return _p.submit(_core.join)


def barrier(process_set=global_process_set):
    """Returns once every rank of the set has called barrier."""
    ps = _p.set_id(process_set)
    _p.submit(_core.barrier, ps)


__all__ = [
    "Adasum", "Average", "HorovodInternalError", "Max", "Min", "Product", "ProcessSet", "Sum",
    "add_process_set", "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "barrier", "ccl_built", "cross_rank", "cross_size", "cuda_built", "ddl_built",
    "global_process_set", "gloo_built", "gloo_enabled", "grouped_allreduce",
    "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "handle_average_backwards_compatibility", "init", "is_homogeneous", "is_initialized",
    "join", "local_rank", "local_size", "mpi_built", "mpi_enabled", "mpi_threads_supported",
    "nccl_built", "poll", "rank", "remove_process_set", "rocm_built", "shutdown", "size",
    "sparse_allreduce_async", "start_timeline", "stop_timeline", "synchronize",
    "HorovodAllreduce", "HorovodGroupedAllreduce",
] + _gather_ops.__all__
