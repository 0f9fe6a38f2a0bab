#!/usr/bin/python3
"""Train a small MLP on scikit-learn's digits with skyring.torch, Horovod's PyTorch API.

    skyringrun -np 4 --clouds aws:2,gcp:2 python3 examples/python/train_digits.py

Four ranks in two emulated clouds (ranks 0-1 "aws", 2-3 "gcp": skyringrun sets each
rank's SKYRING_CLOUD). The gradients are averaged by hvd.DistributedOptimizer; with
--compression int8 (the default here) skyring quantizes them to int8 on the hop between
the clouds only, and sends them exact inside each cloud. Rank 0 prints a progress bar and
the test accuracy per epoch, and at the end the bytes every rank sent per link class with
their egress price (the job's totals). Exits 1 if the final accuracy is below
--min-accuracy.

Written as a Horovod program is; only the codecs beyond none/fp16 (Compression.int8 and
the like) and the traffic report (skyring._core.stats) are skyring's own. The data (1797
8x8 images) ships with Debian's python3-sklearn; nothing is downloaded.
"""

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import skyring.torch as hvd

COMPRESSIONS = ["none", "fp16", "bf16", "int8", "sign", "topk", "powersgd", "default"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.025,
                   help="learning rate per rank; the optimizer uses lr x ranks (default 0.025)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=32, help="per rank (default 32)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--compression", default="int8", choices=COMPRESSIONS,
                   help="gradient compression: fp16 casts on every hop (Horovod's); bf16, "
                        "int8, sign, topk, powersgd are skyring's, on the cross-cloud hop "
                        "only; default = SKYRING_COMPRESSION (default int8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min-accuracy", type=float, default=0.0,
                   help="exit 1 if the last epoch's test accuracy (0..1) is below this")
    args = p.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.hidden < 1 or args.lr <= 0:
        p.error("--epochs, --batch-size and --hidden must be at least 1, --lr above 0")
    return args


def load_data(seed):
    """The same train/test split on every rank: 20% held out, inputs standardized with
    the training set's mean and deviation."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-3
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class Progress:
    """A bar that grows on one line as batches complete, without carriage returns, so it
    reads the same in a terminal and in a CI log (mpirun gives ranks a pty either way)."""

    def __init__(self, epoch, epochs, steps, width=30):
        self.steps, self.width, self.shown = steps, width, 0
        print(f"epoch {epoch + 1}/{epochs} [", end="", flush=True)

    def step(self, done):
        filled = self.width * done // self.steps
        print("#" * (filled - self.shown), end="", flush=True)
        self.shown = filled

    def end(self, text):
        print(f"] {text}", flush=True)


def evaluate(model, test_set):
    """Accuracy over the whole test set: each rank scores its share, and the counts are
    summed over ranks (an int64 allreduce: exact, never compressed)."""
    model.eval()
    x, y = test_set.tensors
    share = range(hvd.rank(), len(x), hvd.size())
    with torch.no_grad():
        correct = (model(x[share]).argmax(1) == y[share]).sum().item()
    counts = hvd.allreduce(torch.tensor([correct, len(share)], dtype=torch.int64),
                           name="test.counts", op=hvd.Sum)
    model.train()
    return counts[0].item() / counts[1].item()


def traffic_report():
    """The bytes and egress dollars every rank sent per link class, summed over ranks."""
    from skyring import _core

    stats = getattr(hvd, "stats", _core.stats)()
    classes = [k for k, v in stats.items() if isinstance(v, dict)]
    counts = hvd.allreduce(torch.tensor([[stats[c]["bytes"], stats[c]["messages"]]
                                         for c in classes], dtype=torch.int64),
                           name="report.counts", op=hvd.Sum)
    dollars = hvd.allreduce(torch.tensor([stats[c]["egress_dollars"] for c in classes],
                                         dtype=torch.float64),
                            name="report.dollars", op=hvd.Sum)
    return [(c, int(counts[i, 0]), int(counts[i, 1]), float(dollars[i]))
            for i, c in enumerate(classes)]


def main():
    args = parse_args()
    start = time.perf_counter()
    hvd.init()
    torch.manual_seed(args.seed)
    # Several ranks share this machine's cores: one thread each.
    torch.set_num_threads(1)
    rank0 = hvd.rank() == 0

    train_set, test_set = load_data(args.seed)
    # Each rank trains on its own 1/size of the data (reshuffled every epoch).
    sampler = DistributedSampler(train_set, num_replicas=hvd.size(), rank=hvd.rank(),
                                 shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    # Averaged gradients of size x batch-size samples: scale the learning rate with size.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(),
                                momentum=args.momentum)
    # Every rank starts from rank 0's weights and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=getattr(hvd.Compression, args.compression),
                                         op=hvd.Average)

    if rank0:
        print(f"train_digits: {hvd.size()} ranks, {len(train_set)} training and "
              f"{len(test_set)} test images, MLP 64-{args.hidden}-10, SGD lr "
              f"{args.lr * hvd.size():g} momentum {args.momentum:g}, batch "
              f"{args.batch_size} per rank, compression {args.compression}", flush=True)
    accuracy = 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        total_loss, steps = 0.0, len(loader)
        bar = Progress(epoch, args.epochs, steps) if rank0 else None
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            if bar:
                bar.step(step + 1)
        # The mean training loss over ranks (a metric, sent exact).
        mean_loss = hvd.allreduce(torch.tensor(total_loss / steps, dtype=torch.float64),
                                  name="train.loss").item()
        accuracy = evaluate(model, test_set)
        if bar:
            bar.end(f"{steps} steps, loss {mean_loss:.4f}, test accuracy {100 * accuracy:.2f}%, "
                    f"{time.perf_counter() - epoch_start:.2f}s")

    report = traffic_report()
    if rank0:
        print("traffic, all ranks together:")
        print(f"  {'link class':<12} {'bytes':>12} {'messages':>9} {'egress $':>12}")
        for name, nbytes, messages, dollars in report:
            print(f"  {name:<12} {nbytes:>12,} {messages:>9,} {dollars:>12.8f}")
        print(f"  {'total':<12} {sum(r[1] for r in report):>12,} "
              f"{sum(r[2] for r in report):>9,} {sum(r[3] for r in report):>12.8f}")
        print(f"final test accuracy {100 * accuracy:.2f}% in "
              f"{time.perf_counter() - start:.1f}s", flush=True)
    if accuracy < args.min_accuracy:
        if rank0:
            print(f"train_digits: error: test accuracy {100 * accuracy:.2f}% is below "
                  f"--min-accuracy {100 * args.min_accuracy:.2f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
