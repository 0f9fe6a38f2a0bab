"""horovod.torch.functions: broadcasting parameters, optimizer state and Python objects.

Objects travel pickled in uint8 tensors (cloudpickle when it is installed, as Horovod,
otherwise the standard pickle, which handles everything but lambdas and local classes).
"""

import collections
import io
from collections.abc import Iterable

import torch

from skyring.torch._basics import global_process_set, rank
from skyring.torch.mpi_ops import allgather, broadcast_, broadcast_async_, synchronize

try:
    import cloudpickle as _pickle
except ImportError:  # Debian's python3 has no cloudpickle
    import pickle as _pickle


def broadcast_parameters(params, root_rank, process_set=global_process_set):
    """Broadcasts parameters (a state_dict, named_parameters() or a list of tensors) from
    root_rank to every process, in place."""
    if isinstance(params, dict):
        params = sorted(params.items())
    elif isinstance(params, list):
        params = [p if isinstance(p, tuple) else (None, p) for p in params]
    elif isinstance(params, Iterable):
        params = [p if isinstance(p, tuple) else (None, p) for p in params]
    else:
        raise ValueError("invalid params of type: %s" % type(params))
    handles = []
    for name, p in params:
        # Into p.data: the memory must change, and autograd forbids in-place ops on leaves
        # that require grad (the copy back of a non-contiguous one would be one).
        handles.append(broadcast_async_(p.data, root_rank, name, process_set=process_set))
    for handle in handles:
        synchronize(handle)


def broadcast_optimizer_state(optimizer, root_rank, model=None, process_set=global_process_set):
    """Broadcasts an optimizer's state (tensors in place, scalars pickled) from root_rank."""
    from skyring.torch.optimizer import _DistributedOptimizer

    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    state_dict = optimizer.state_dict()

    sparse_params = []
    if model:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.sparse.Embedding) and m.sparse:
                sparse_params.extend(id(p) for p in m.parameters())

    # A new optimizer has no state yet: make it by stepping with zero gradients (without the
    # distributed step, which would need every rank to step).
    if len(state_dict["state"]) == 0:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in state_dict["state"]:
                    p.grad = p.data.new(p.size()).zero_()
                    if isinstance(optimizer, torch.optim.SparseAdam) or \
                            (isinstance(optimizer, torch.optim.SGD) and id(p) in sparse_params):
                        p.grad = p.grad.to_sparse()
        # The DistributedOptimizer class is made per wrapped class, with this module name.
        if optimizer.__module__ == _DistributedOptimizer.__module__:
            super(optimizer.__class__, optimizer).step()
        else:
            optimizer.step()
        state_dict = optimizer.state_dict()

    if len(state_dict["state"]) == 0:
        return

    params = []
    scalars = {}
    callbacks = {}
    occurrences = collections.defaultdict(int)

    def _create_state_callback(pid, name):
        def _assign_state(v):
            state_dict["state"][pid][name] = v
        return _assign_state

    def _create_option_callback(index, option_key):
        def _assign_option(v):
            optimizer.param_groups[index][option_key] = v
        return _assign_option

    for index, group in enumerate(state_dict["param_groups"]):
        for option_key, option_value in group.items():
            if option_key == "params":
                continue
            key = "%s.%d" % (option_key, index)
            scalars[key] = option_value
            callbacks[key] = _create_option_callback(index, option_key)
        for pid in group["params"]:
            if pid not in state_dict["state"]:
                continue
            for name, p in state_dict["state"][pid].items():
                occurrences[name] += 1
                key = "%s.%d" % (str(name), occurrences[name])
                if torch.is_tensor(p):
                    params.append((key, p))
                else:
                    scalars[key] = p
                    callbacks[key] = _create_state_callback(pid, name)

    broadcast_parameters(params, root_rank, process_set=process_set)
    scalars = broadcast_object(scalars, root_rank, process_set=process_set)
    for key, p in scalars.items():
        callbacks[key](p)


def _dumps(obj):
    b = io.BytesIO()
    _pickle.dump(obj, b)
    return torch.frombuffer(bytearray(b.getvalue()), dtype=torch.uint8)


def broadcast_object(obj, root_rank=0, name=None, process_set=global_process_set):
    """Pickles obj on root_rank and returns it on every process of the set. The default name
    is "broadcast_object" (Horovod's is the type's name, which hangs when ranks pass objects
    of different types, such as None on the receivers)."""
    if name is None:
        name = "broadcast_object"
    if rank() == root_rank:
        t = _dumps(obj)
        sz = torch.IntTensor([t.shape[0]])
        broadcast_(sz, root_rank, name + ".sz", process_set)
    else:
        sz = torch.IntTensor([0])
        broadcast_(sz, root_rank, name + ".sz", process_set)
        t = torch.empty(int(sz.item()), dtype=torch.uint8)
    broadcast_(t, root_rank, name + ".t", process_set)
    if rank() != root_rank:
        obj = _pickle.loads(t.numpy().tobytes())
    return obj


def allgather_object(obj, name=None, process_set=global_process_set):
    """Pickles obj on every process and returns the list of all of them, in rank order.
    The default name is "allgather_object" (Horovod's, the type's name, would differ
    between ranks that pass different types)."""
    if name is None:
        name = "allgather_object"
    t = _dumps(obj)
    sizes = allgather(torch.IntTensor([t.shape[0]]), name=name + ".sz",
                      process_set=process_set).tolist()
    gathered = allgather(t, name=name + ".t", process_set=process_set).numpy()
    objs, start = [], 0
    for n in sizes:
        objs.append(_pickle.loads(gathered[start:start + n].tobytes()))
        start += n
    return objs


__all__ = ["broadcast_parameters", "broadcast_optimizer_state", "broadcast_object",
           "allgather_object"]
