"""Deep-ensemble training: M members trained at once (raysweep.training.loop.train_members) against
the same M members trained one after another.

    python benchmarks/ensemble_vectorised.py [--repeats 5] [--threads 2] [--model mlp|cnn]

Members: 64→128→128→10 MLPs (or CNN(width=16): two conv3x3-GroupNorm-ReLU-maxpool stages, 1x8x8
images) on scikit-learn's digits (1,400 training images), Adam (lr 2e-3), batch 64, 5 epochs, M = 8.
Arms:
  vectorised            train_members: one batched model for all M (batched.py), fused Adam
  one by one            a plain per-member loop with the same Adam (training.adam: fused)
  one by one, for-loop  the same loop with torch's default CPU Adam (per-parameter for-loop
                        implementation), as in the earlier rows of RESULTS-ensemble.md
"matrix products alone" (MLP only) times nothing but the batched matrix products one vectorised
step must do (the forward baddbmm of every layer, and the backward's weight- and input-gradient
bmm), on tensors of the same shapes, for the same number of steps: the arithmetic floor, so
one-by-one / floor is the most any vectorisation could gain here.
All arms draw identical initialisations and data orders, so they train the same 8 networks; the
script checks their test accuracies agree and reports min/median/max wall time over the repeats,
the arms interleaved within each repeat. Results are written down in benchmarks/RESULTS-ensemble.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch

from raysweep.experiment import Train
from raysweep.models.cnn import CNN
from raysweep.models.mlp import MLP
from raysweep.tasks.vision import Digits
from raysweep.training.loop import train_members
from raysweep.training.optim import adam
from raysweep.training.stack import StackedMembers

M, EPOCHS = 8, 5
TRAIN = Train(epochs=EPOCHS, batch_size=64, lr=2e-3)
MODELS = {"mlp": (MLP(width=128, depth=2), "64->128->128->10 MLP"),
          "cnn": (CNN(width=16, stages=2), "CNN(width=16, stages=2) on 1x8x8 images")}


def members(model, data, seed: int) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [model.build(data.input_dim, 10) for _ in range(M)]


def vectorised(data, nets, seed):
    stack = train_members(StackedMembers(copy.deepcopy(nets)), data, TRAIN, seed, lambda *a: None)
    with torch.no_grad():
        logits = stack.forward(data.eval_sets["test"][0], shared_input=True, train=False)  # (M, B, C)
    return logits.argmax(-1)


def one_by_one(data, nets, seed, make_optimizer):
    """The plain loop: the same data orders train_members draws, one member at a time."""
    nets = copy.deepcopy(nets)
    n, batch = len(data.train_x), TRAIN.batch_size
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.stack([torch.randperm(n, generator=generator) for _ in range(M)]) for _ in range(EPOCHS)]
    for m, net in enumerate(nets):
        optimizer = make_optimizer(list(net.parameters()))
        for order in orders:
            for start in range(0, n, batch):
                idx = order[m, start:start + batch]
                loss = torch.nn.functional.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return torch.stack([net(data.eval_sets["test"][0]) for net in nets]).argmax(-1)


def matmul_floor(nets, data) -> float:
    """Seconds the vectorised arm's batched matrix products alone take over the whole run (MLP)."""
    layers = [layer for layer in nets[0] if isinstance(layer, torch.nn.Linear)]
    batch, steps = TRAIN.batch_size, -(-len(data.train_x) // TRAIN.batch_size) * EPOCHS
    weights = [torch.randn(M, layer.out_features, layer.in_features) for layer in layers]
    inputs = [torch.randn(M, layer.in_features, batch) for layer in layers]
    grads = [torch.randn(M, layer.out_features, batch) for layer in layers]
    biases = [torch.randn(M, layer.out_features, 1) for layer in layers]
    start = time.perf_counter()
    for _ in range(steps):
        for w, b, x in zip(weights, biases, inputs):
            torch.baddbmm(b, w, x)  # forward
        for index, (w, x, g) in enumerate(zip(weights, inputs, grads)):
            torch.bmm(g, x.transpose(1, 2))  # weight gradient
            if index:
                torch.bmm(w.transpose(1, 2), g)  # input gradient (none for the data)
    return time.perf_counter() - start


ARMS = {
    "vectorised": vectorised,
    "one by one": lambda data, nets, seed: one_by_one(data, nets, seed, lambda p: adam(p, TRAIN)),
    "one by one, for-loop": lambda data, nets, seed: one_by_one(
        data, nets, seed, lambda p: torch.optim.Adam(p, lr=TRAIN.lr, foreach=False)),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, described = MODELS[args.model]
    data = Digits(as_images=args.model == "cnn").load(1400, 0, [], 397)
    labels = data.eval_sets["test"][1]
    times = {name: [] for name in ARMS}
    floors = []
    accuracy = {name: [] for name in ARMS}
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for repeat in range(args.repeats + 1):  # repeat 0 warms up and is not timed
        nets = members(model, data, repeat)
        for name, arm in ARMS.items():
            start = time.perf_counter()
            predictions = arm(data, nets, repeat)
            elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
                accuracy[name].append((predictions == labels).float().mean(1))  # (M,)
        if args.model == "mlp":
            floor = matmul_floor(nets, data)
            floors.append(floor) if repeat else None
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{M} members {described}, {EPOCHS} epochs of 1400 digits, batch 64, "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    for name, values in times.items():
        print(f"{name:>20}: min {min(values):.2f} s  median {statistics.median(values):.2f} s  max {max(values):.2f} s")
    if floors:
        print(f"{'matrix products alone':>20}: min {min(floors):.2f} s  median {statistics.median(floors):.2f} s  "
              f"max {max(floors):.2f} s  (one by one / floor, median: "
              f"{statistics.median(times['one by one']) / statistics.median(floors):.1f}x at most)")
    for baseline in list(ARMS)[1:]:
        ratios = [b / a for a, b in zip(times["vectorised"], times[baseline])]
        print(f"speed-up ({baseline} / vectorised, per repeat): min {min(ratios):.1f}x  "
              f"median {statistics.median(ratios):.1f}x  max {max(ratios):.1f}x")
    for name, values in accuracy.items():
        acc = torch.stack(values)  # (repeats, M)
        print(f"{name:>20}: member test accuracy mean {acc.mean():.4f}  (min {acc.min():.4f}, max {acc.max():.4f})")
    reference = torch.stack(accuracy["vectorised"])
    gap = max((torch.stack(values) - reference).abs().max().item() for values in accuracy.values())
    print(f"largest per-member accuracy difference between the arms: {gap:.4f}")


if __name__ == "__main__":
    main()
