"""Deep-ensemble training: M members trained at once (torch.func stack_module_state + vmap, as
raysweep.methods.training.train_members does) against the same M members trained one after another.

    python benchmarks/ensemble_vectorised.py [--repeats 5] [--threads 2]

Members: 64→128→128→10 MLPs on scikit-learn's digits (1,400 training images), Adam (lr 2e-3),
batch 64, 5 epochs, M = 8. Both arms draw identical initialisations and data orders, so they train
the same 8 networks; the script checks their test accuracies agree and reports min/median/max
wall time over the repeats. Results are written down in benchmarks/RESULTS-ensemble.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from raysweep.experiment import Train
from raysweep.methods.training import StackedMembers, train_members
from raysweep.models.mlp import MLP
from raysweep.tasks.vision import Digits

M, WIDTH, EPOCHS = 8, 128, 5
TRAIN = Train(epochs=EPOCHS, batch_size=64, lr=2e-3)


def members(seed: int) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [MLP(width=WIDTH, depth=2).build(64, 10) for _ in range(M)]


def vectorised(data, nets, seed):
    stack = train_members(StackedMembers(copy.deepcopy(nets)), data, TRAIN, seed, lambda *a: None)
    with torch.no_grad():
        logits = stack.forward(data.eval_sets["test"][0], shared_input=True, train=False)  # (M, B, C)
    return logits.argmax(-1)


def one_by_one(data, nets, seed):
    """The plain loop: the same data orders train_members draws, one member at a time."""
    nets = copy.deepcopy(nets)
    n, batch = len(data.train_x), TRAIN.batch_size
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.stack([torch.randperm(n, generator=generator) for _ in range(M)]) for _ in range(EPOCHS)]
    for m, net in enumerate(nets):
        optimizer = torch.optim.Adam(net.parameters(), lr=TRAIN.lr)
        for order in orders:
            for start in range(0, n, batch):
                idx = order[m, start:start + batch]
                loss = torch.nn.functional.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return torch.stack([net(data.eval_sets["test"][0]) for net in nets]).argmax(-1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Digits().load(1400, 0, [], 397)
    labels = data.eval_sets["test"][1]
    times = {"vectorised": [], "one by one": []}
    accuracy = {}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up and is not timed
        nets = members(repeat)
        for name, arm in (("vectorised", vectorised), ("one by one", one_by_one)):
            start = time.perf_counter()
            predictions = arm(data, nets, repeat)
            elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
                accuracy.setdefault(name, []).append((predictions == labels).float().mean(1))  # (M,)
    print(f"{M} members {64}->{WIDTH}->{WIDTH}->10, {EPOCHS} epochs of 1400 digits, batch 64, "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    for name, values in times.items():
        print(f"{name:>11}: min {min(values):.2f} s  median {statistics.median(values):.2f} s  max {max(values):.2f} s")
    ratios = [b / a for a, b in zip(times["vectorised"], times["one by one"])]
    print(f"speed-up (one by one / vectorised, per repeat): min {min(ratios):.1f}x  "
          f"median {statistics.median(ratios):.1f}x  max {max(ratios):.1f}x")
    for name, values in accuracy.items():
        acc = torch.stack(values)  # (repeats, M)
        print(f"{name:>11}: member test accuracy mean {acc.mean():.4f}  (min {acc.min():.4f}, max {acc.max():.4f})")
    gap = (torch.stack(accuracy["vectorised"]) - torch.stack(accuracy["one by one"])).abs().max()
    print(f"largest per-member accuracy difference between the arms: {gap:.4f}")


if __name__ == "__main__":
    main()
