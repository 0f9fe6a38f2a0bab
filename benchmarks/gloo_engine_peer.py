#!/usr/bin/python3
"""engine_bench's Gloo peer: one training step's gradient allreduce through
torch.distributed's gloo backend with DDP-style buckets, for the models whose shapes
engine_bench prints (--print-shapes; the one home of the shapes).

    build/benchmarks/engine_bench --print-shapes > shapes.json
    mpirun -np 4 --oversubscribe /usr/bin/python3 benchmarks/gloo_engine_peer.py \
        --shapes shapes.json --out gloo.txt [-n 10] [-w 2]
    mpirun -np 4 --oversubscribe build/benchmarks/engine_bench --gloo gloo.txt

Launched like engine_bench: rank and world size come from Open MPI's OMPI_COMM_WORLD_*
variables or torchrun's RANK / WORLD_SIZE (MASTER_ADDR / MASTER_PORT, default
127.0.0.1:29517). Buckets as DDP makes them: parameters in reverse order, the first bucket
up to 1 MiB, the others up to 25 MiB (bucket_cap_mb). Each bucket is one flat tensor that
the gradients live in (DDP's gradient_as_bucket_view=True: no copies, which favours Gloo),
and a step launches every bucket's all_reduce asynchronously, then waits for all of them
(all gradients are ready at once here, as in engine_bench). Time as engine_bench's: per step
the maximum over ranks after a barrier, median over -n steps after -w warmup steps. Rank 0
prints a table and writes "MODEL SECONDS" lines to --out for engine_bench --gloo.
Use Debian's /usr/bin/python3, which has python3-torch (.ci/install-deps installs it).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

FIRST_BUCKET = 1 << 20
BUCKET = 25 << 20


def buckets(shapes):
    """Sizes (in f32 elements) of DDP's buckets over the parameters in reverse order."""
    out, current, cap = [], 0, FIRST_BUCKET
    for p in reversed(shapes):
        n = math.prod(p["shape"])
        if current and (current + n) * 4 > cap:
            out.append(current)
            current, cap = 0, BUCKET
        current += n
    if current:
        out.append(current)
    return out


def env_int(*names):
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", required=True, help="engine_bench --print-shapes output")
    p.add_argument("--out", help="file for 'MODEL SECONDS' lines (rank 0 writes it)")
    p.add_argument("--models", default=None, help="comma-separated subset of the shapes' models")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("-w", type=int, default=2)
    args = p.parse_args()
    if args.n < 1 or args.w < 0:
        p.error("-n must be at least 1 and -w at least 0")
    with open(args.shapes) as f:
        models = json.load(f)
    names = args.models.split(",") if args.models else list(models)
    for name in names:
        if name not in models:
            p.error(f"--models: unknown model '{name}' ({', '.join(models)})")

    rank = env_int("OMPI_COMM_WORLD_RANK", "RANK")
    world = env_int("OMPI_COMM_WORLD_SIZE", "WORLD_SIZE")
    if rank is None or world is None:
        rank, world = 0, 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if rank == 0:
        print(f"# gloo (torch {torch.__version__}) DDP-style buckets: {world} ranks, f32 sum, "
              f"median of {args.n} steps after {args.w} warmup (ms)")
        print(f"#{'model':>10} {'tensors':>8} {'bytes':>12} {'buckets':>8} {'gloo':>10} {'#wrong':>7}")
    lines = []
    for name in names:
        sizes = buckets(models[name])
        flat = [torch.ones(n, dtype=torch.float32) for n in sizes]
        times = []
        for step in range(args.w + args.n):
            for t in flat:
                t.fill_(1.0)
            dist.barrier()
            start = time.perf_counter()
            works = [dist.all_reduce(t, async_op=True) for t in flat]
            for w in works:
                w.wait()
            secs = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(secs, op=dist.ReduceOp.MAX)
            if step >= args.w:
                times.append(secs.item())
        # Checked step: rank r gives r + 1, the sum is n(n+1)/2 exactly.
        for t in flat:
            t.fill_(float(rank + 1))
        for w in [dist.all_reduce(t, async_op=True) for t in flat]:
            w.wait()
        want = world * (world + 1) / 2
        wrong = torch.tensor([sum(int((t != want).sum()) for t in flat)])
        dist.all_reduce(wrong)
        med = statistics.median(times)
        if rank == 0:
            total = sum(sizes)
            print(f" {name:>10} {len(models[name]):>8} {total * 4:>12} {len(sizes):>8} "
                  f"{med * 1e3:>10.2f} {int(wrong):>7}", flush=True)
        lines.append(f"{name} {med:.9f}\n")
        del flat
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            f.write(f"# gloo_engine_peer.py: {world} ranks, median of {args.n} steps\n")
            f.writelines(lines)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
