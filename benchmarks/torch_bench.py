#!/usr/bin/python3
"""skyring.torch beside torch.distributed's Gloo: one training step's gradient communication.

    skyringrun -np 4 /usr/bin/python3 benchmarks/torch_bench.py [-n 7] [-w 2]

For the gradient lists of ResNet-50 and BERT-base (the shapes of benchmarks/model_shapes.h,
copied below; --shapes reads `engine_bench --print-shapes` instead), every rank runs, in
the same job and interleaved step by step, so that all see the same machine:

- "skyring": what hvd.DistributedOptimizer sends: one hvd.allreduce_async_ per gradient
  (op Average, compression "default" = SKYRING_COMPRESSION, as the optimizer passes), in
  reverse (backward) order, then hvd.synchronize of every handle;
- "_core": the same allreduces through skyring._core.allreduce_async / Handle.wait
  directly (the engine without skyring.torch's Python layer);
- "flat": one hvd.allreduce_ of the whole gradient buffer (the lower bound: one tensor);
- "ddp": torch.distributed Gloo with DDP's buckets (reverse order, first bucket 1 MiB, then
  25 MiB; the gradients live in the buckets, as gradient_as_bucket_view=True, so Gloo
  copies nothing), every bucket's all_reduce launched asynchronously, then waited for, as
  benchmarks/gloo_engine_peer.py does;
- "per-tensor": one blocking torch.distributed.all_reduce per gradient, reverse order.

All gradients are ready at once (no backward pass runs): this is communication only. The
Gloo runs sum and do not divide by the world size (DDP would: a small advantage to Gloo).
A step's time is the slowest rank's, from a barrier; tables give medians over -n steps
after -w warmup steps. #wrong counts wrong elements of one checked step per method.

Then the Python overhead of skyring.torch: --tiny tensors of 4 floats submitted and
synchronized through hvd.allreduce_async_/hvd.synchronize, against the same through
skyring._core.allreduce_async/Handle.wait directly (same engine, no torch layer); the
difference per tensor is what skyring.torch's Python adds (issue 13: at most 20 us).
Wall time on a loaded machine also counts the time other processes hold the cores, so
the CPU time of the calling thread (time.thread_time, over submission and
synchronization) is printed beside it: the same difference without the waits.

Gloo's rendezvous uses a port rank 0 picks (broadcast through skyring); 127.0.0.1 unless
--gloo-addr. Use Debian's /usr/bin/python3 (torch 1.13) with skyring importable
(PYTHONPATH=build/bindings/python, or the package installed).
"""

import argparse
import datetime
import json
import math
import os
import socket
import statistics
import sys
import time

FIRST_BUCKET = 1 << 20
BUCKET = 25 << 20


# ------------------------------------------------------------------ shapes (model_shapes.h)

def resnet50():
    """torchvision.models.resnet50(): 161 tensors, 25,557,032 parameters."""
    params = [("conv1.weight", [64, 3, 7, 7]), ("bn1.weight", [64]), ("bn1.bias", [64])]
    inplanes = 64
    for stage, blocks in enumerate([3, 4, 6, 3]):
        planes = 64 << stage
        for b in range(blocks):
            p = f"layer{stage + 1}.{b}"
            params += [(f"{p}.conv1.weight", [planes, inplanes, 1, 1]),
                       (f"{p}.bn1.weight", [planes]), (f"{p}.bn1.bias", [planes]),
                       (f"{p}.conv2.weight", [planes, planes, 3, 3]),
                       (f"{p}.bn2.weight", [planes]), (f"{p}.bn2.bias", [planes]),
                       (f"{p}.conv3.weight", [planes * 4, planes, 1, 1]),
                       (f"{p}.bn3.weight", [planes * 4]), (f"{p}.bn3.bias", [planes * 4])]
            if b == 0:
                params += [(f"{p}.downsample.0.weight", [planes * 4, inplanes, 1, 1]),
                           (f"{p}.downsample.1.weight", [planes * 4]),
                           (f"{p}.downsample.1.bias", [planes * 4])]
            inplanes = planes * 4
    return params + [("fc.weight", [1000, 2048]), ("fc.bias", [1000])]


def bert_base():
    """transformers.BertModel(bert-base-uncased): 199 tensors, 109,482,240 parameters."""
    def linear(p, out, inp):
        return [(f"{p}.weight", [out, inp]), (f"{p}.bias", [out])]

    def layer_norm(p):
        return [(f"{p}.weight", [768]), (f"{p}.bias", [768])]

    params = [("embeddings.word_embeddings.weight", [30522, 768]),
              ("embeddings.position_embeddings.weight", [512, 768]),
              ("embeddings.token_type_embeddings.weight", [2, 768])]
    params += layer_norm("embeddings.LayerNorm")
    for i in range(12):
        p = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            params += linear(f"{p}.attention.self.{part}", 768, 768)
        params += linear(f"{p}.attention.output.dense", 768, 768)
        params += layer_norm(f"{p}.attention.output.LayerNorm")
        params += linear(f"{p}.intermediate.dense", 3072, 768)
        params += linear(f"{p}.output.dense", 768, 3072)
        params += layer_norm(f"{p}.output.LayerNorm")
    return params + linear("pooler.dense", 768, 768)


MODELS = {"resnet50": (resnet50, 161, 25557032), "bert-base": (bert_base, 199, 109482240)}


def load_models(args, parser):
    if args.shapes:
        with open(args.shapes) as f:
            models = {m: [(p["name"], p["shape"]) for p in ps] for m, ps in json.load(f).items()}
    else:
        models = {}
        for name, (make, tensors, count) in MODELS.items():
            models[name] = make()
            # The copy must stay equal to model_shapes.h.
            assert len(models[name]) == tensors, name
            assert sum(math.prod(s) for _, s in models[name]) == count, name
    names = args.models.split(",") if args.models else list(models)
    for name in names:
        if name not in models:
            parser.error(f"--models: unknown model '{name}' ({', '.join(models)})")
    return {n: models[n] for n in names}


# ------------------------------------------------------------------ the steps


def bucket_sizes(params_reversed):
    """DDP's buckets (in elements) over the parameters in reverse order."""
    out, current, cap = [], 0, FIRST_BUCKET
    for _, shape in params_reversed:
        n = math.prod(shape)
        if current and (current + n) * 4 > cap:
            out.append(current)
            current, cap = 0, BUCKET
        current += n
    if current:
        out.append(current)
    return out


class Gradients:
    """One flat f32 buffer per rank holding every gradient, laid out in reverse parameter
    order, so that the gradients (views in backward order) and DDP's buckets (contiguous
    slices) share its memory, as with gradient_as_bucket_view=True."""

    def __init__(self, torch, model, params):
        rev = list(reversed(params))
        self.flat = torch.empty(sum(math.prod(s) for _, s in rev), dtype=torch.float32)
        self.grads, off = [], 0
        for name, shape in rev:
            n = math.prod(shape)
            self.grads.append((f"{model}.{name}", self.flat[off:off + n].view(shape)))
            off += n
        self.buckets, off = [], 0
        for n in bucket_sizes(rev):
            self.buckets.append(self.flat[off:off + n])
            off += n
        self.name = model


def run_skyring(hvd, g):
    handles = [hvd.allreduce_async_(t, name=name, op=hvd.Average,
                                    compression=hvd.Compression.default)
               for name, t in g.grads]
    for h in handles:
        hvd.synchronize(h)


def run_core(core, g):
    handles = [core.allreduce_async(f"core.{name}", t.data_ptr(), list(t.shape), "f32", "avg",
                                    compression="default")
               for name, t in g.grads]
    for h in handles:
        h.wait()


def run_flat(hvd, g):
    hvd.allreduce_(g.flat, name=f"{g.name}.flat", op=hvd.Average)


def run_ddp(dist, g):
    for w in [dist.all_reduce(b, async_op=True) for b in g.buckets]:
        w.wait()


def run_per_tensor(dist, g):
    for _, t in g.grads:
        dist.all_reduce(t)


def timed(torch, dist, fn):
    """Seconds of fn on the slowest rank, from a barrier."""
    dist.barrier()
    start = time.perf_counter()
    fn()
    secs = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    return secs.item()


def bench_model(torch, dist, hvd, core, name, params, args):
    g = Gradients(torch, name, params)
    world = hvd.size()
    methods = {
        "skyring": (lambda: run_skyring(hvd, g), (world + 1) / 2),
        "core": (lambda: run_core(core, g), (world + 1) / 2),
        "flat": (lambda: run_flat(hvd, g), (world + 1) / 2),
        "ddp": (lambda: run_ddp(dist, g), world * (world + 1) / 2),
        "per-tensor": (lambda: run_per_tensor(dist, g), world * (world + 1) / 2),
    }
    times = {m: [] for m in methods}
    for step in range(args.w + args.n):
        for m, (fn, _) in methods.items():
            g.flat.fill_(1.0)
            secs = timed(torch, dist, fn)
            if step >= args.w:
                times[m].append(secs)
    wrong = {}
    for m, (fn, want) in methods.items():
        # Rank r gives r + 1: the sum is n(n+1)/2 and the mean (n+1)/2, exactly.
        g.flat.fill_(float(hvd.rank() + 1))
        fn()
        bad = torch.tensor([int((g.flat != want).sum())], dtype=torch.int64)
        dist.all_reduce(bad)
        wrong[m] = int(bad)
    med = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    return {"model": name, "tensors": len(g.grads), "bytes": g.flat.numel() * 4,
            "buckets": len(g.buckets), "ms": med, "wrong": sum(wrong.values())}


def bench_overhead(torch, dist, hvd, core, args):
    """us per tensor, each {"hvd": .., "core": ..}: the step (slowest rank), this rank's
    submission loop, and the CPU time of this rank's calling thread over submission and
    synchronization (time.thread_time: what the Python layer costs, blind to waits and to
    other processes taking the cores)."""
    flat = torch.zeros(args.tiny * 4, dtype=torch.float32)
    tiny = [flat[4 * i:4 * i + 4] for i in range(args.tiny)]
    submit = {"hvd": [], "core": []}
    cpu = {"hvd": [], "core": []}

    def via_hvd():
        cpu0, start = time.thread_time(), time.perf_counter()
        handles = [hvd.allreduce_async_(t, name=f"tiny.hvd.{i}", op=hvd.Sum)
                   for i, t in enumerate(tiny)]
        submit["hvd"].append(time.perf_counter() - start)
        for h in handles:
            hvd.synchronize(h)
        cpu["hvd"].append(time.thread_time() - cpu0)

    def via_core():
        cpu0, start = time.thread_time(), time.perf_counter()
        handles = [core.allreduce_async(f"tiny.core.{i}", t.data_ptr(), [4], "f32", "sum")
                   for i, t in enumerate(tiny)]
        submit["core"].append(time.perf_counter() - start)
        for h in handles:
            h.wait()
        cpu["core"].append(time.thread_time() - cpu0)

    times = {"hvd": [], "core": []}
    for step in range(args.w + args.n):
        for m, fn in (("hvd", via_hvd), ("core", via_core)):
            flat.zero_()
            secs = timed(torch, dist, fn)
            if step >= args.w:
                times[m].append(secs)
    per = {m: statistics.median(t) / args.tiny * 1e6 for m, t in times.items()}
    sub = {m: statistics.median(t[args.w:]) / args.tiny * 1e6 for m, t in submit.items()}
    used = {m: statistics.median(t[args.w:]) / args.tiny * 1e6 for m, t in cpu.items()}
    return per, sub, used


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated subset (resnet50,bert-base)")
    p.add_argument("--shapes", help="read the shapes from `engine_bench --print-shapes` output")
    p.add_argument("-n", type=int, default=7, help="timed steps (default 7)")
    p.add_argument("-w", type=int, default=2, help="warmup steps (default 2)")
    p.add_argument("--tiny", type=int, default=1000,
                   help="tensors of the overhead measurement (0: skip it; default 1000)")
    p.add_argument("--gloo-addr", default="127.0.0.1")
    args = p.parse_args()
    if args.n < 1 or args.w < 0 or args.tiny < 0:
        p.error("-n must be at least 1, -w and --tiny at least 0")
    models = load_models(args, p)

    import torch
    import torch.distributed as dist

    import skyring.torch as hvd
    from skyring import _core

    torch.set_num_threads(1)
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    port = hvd.broadcast_object(free_port() if rank == 0 else None, root_rank=0,
                                name="torch_bench.port")
    dist.init_process_group("gloo", init_method=f"tcp://{args.gloo_addr}:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=300))

    load = os.getloadavg()[0]
    results = [bench_model(torch, dist, hvd, _core, name, params, args)
               for name, params in models.items()]
    if rank == 0:
        print(f"# torch_bench: {world} ranks, torch {torch.__version__}, skyring "
              f"{_core.__version__}; median of {args.n} steps after {args.w} warmup, ms "
              f"(a step is the slowest rank's); load average {load:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end")
        print("| model | tensors | bytes | skyring.torch | _core | flat | × flat | DDP Gloo "
              "buckets | ddp ÷ sky | per-tensor Gloo | per-tensor ÷ sky | #wrong |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            ms = r["ms"]
            print(f"| {r['model']} | {r['tensors']} | {r['bytes']} | {ms['skyring']:.1f} | "
                  f"{ms['core']:.1f} | {ms['flat']:.1f} | {ms['skyring'] / ms['flat']:.2f} | {ms['ddp']:.1f} | "
                  f"{ms['ddp'] / ms['skyring']:.2f} | {ms['per-tensor']:.1f} | "
                  f"{ms['per-tensor'] / ms['skyring']:.2f} | {r['wrong']} |", flush=True)
    if args.tiny:
        per, sub, used = bench_overhead(torch, dist, hvd, _core, args)
        if rank == 0:
            print(f"\n# Python overhead: {args.tiny} tensors of 4 f32 per step, submitted then "
                  f"synchronized; us per tensor, medians: step (slowest rank), rank 0's "
                  f"submission loop, rank 0's calling thread's CPU time")
            print("| step, torch | step, _core | step, torch − _core | submit, torch "
                  "| submit, _core | CPU, torch | CPU, _core | CPU, torch − _core |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            print(f"| {per['hvd']:.2f} | {per['core']:.2f} | {per['hvd'] - per['core']:.2f} "
                  f"| {sub['hvd']:.2f} | {sub['core']:.2f} | {used['hvd']:.2f} "
                  f"| {used['core']:.2f} | {used['hvd'] - used['core']:.2f} |", flush=True)
    dist.destroy_process_group()
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
