#!/usr/bin/python3
"""Gloo's allreduce through PyTorch (torch.distributed, gloo backend), timed like
allreduce_perf: same sizes, same columns, same definition of time (mean over
iterations, maximum over ranks) and bus bandwidth.

    python3 benchmarks/gloo_allreduce_perf.py --ranks 4 -b 8 -e 256M -f 2 -n 20 -w 5

It spawns the ranks itself (torch.multiprocessing) on 127.0.0.1. With --from-env it is
one rank of a job someone else started (mpirun: OMPI_COMM_WORLD_RANK/SIZE, or RANK and
WORLD_SIZE), meeting at MASTER_ADDR:MASTER_PORT (benchmarks/node_level_bench.sh). Use
Debian's /usr/bin/python3, which has python3-torch.
"""
import argparse
import os
import sys
import time


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1].upper(), 1)
    return int(s[:-1] if mult > 1 else s) * mult


def worker(rank, args, port):
    import torch
    import torch.distributed as dist

    if port is not None:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.set_num_threads(1)
    n = args.ranks
    bus = 2.0 * (n - 1) / n if n > 1 else 1.0
    if rank == 0:
        print(f"# gloo (torch {torch.__version__}) allreduce: {n} ranks, float sum, "
              f"{args.n} iters, {args.w} warmup")
        print(f"#{'size':>12} {'count':>12} {'type':>8} {'redop':>6} {'time(us)':>10} "
              f"{'algbw':>8} {'busbw':>8} {'#wrong':>7}")
    total, rows = 0.0, 0
    size = args.b
    while size <= args.e:
        count = max(size // 4, 1)
        # Integer-valued inputs: the exact sum is representable, so #wrong is exact.
        idx = torch.arange(count, dtype=torch.int64)
        base = (((idx * 7 + rank * 13) % 11) - 5).to(torch.float32)
        data = base.clone()
        for _ in range(args.w):
            data.copy_(base)
            dist.all_reduce(data)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.n):
            dist.all_reduce(data)
        t = torch.tensor([(time.perf_counter() - start) / args.n], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        data.copy_(base)
        dist.all_reduce(data)
        want = sum((((idx * 7 + r * 13) % 11) - 5) for r in range(n)).to(torch.float32)
        wrong = torch.tensor([int((data != want).sum())])
        dist.all_reduce(wrong)
        algbw = count * 4 / t.item() / 1e9
        total += algbw * bus
        rows += 1
        if rank == 0:
            print(f" {count * 4:>12} {count:>12} {'f32':>8} {'sum':>6} {t.item() * 1e6:>10.2f} "
                  f"{algbw:>8.3f} {algbw * bus:>8.3f} {int(wrong):>7}", flush=True)
        size *= args.f
    if rank == 0:
        print(f"# Avg bus bandwidth    : {total / max(rows, 1):g}")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("-b", type=parse_size, default=8)
    p.add_argument("-e", type=parse_size, default=256 << 20)
    p.add_argument("-f", type=int, default=2)
    p.add_argument("-n", type=int, default=20)
    p.add_argument("-w", type=int, default=5)
    p.add_argument("--from-env", action="store_true",
                   help="one rank of a job launched elsewhere (see above)")
    args = p.parse_args()
    if args.from_env:
        env = os.environ
        rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("RANK", "0")))
        args.ranks = int(env.get("OMPI_COMM_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
        worker(rank, args, None)
        return 0
    import torch.multiprocessing as mp
    port = 29000 + os.getpid() % 1000
    mp.spawn(worker, args=(args, port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    sys.exit(main())
