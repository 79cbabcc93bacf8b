"""How the uncertainty of image classifiers scales with training images N and network width P.

Local default (CPU, offline): scikit-learn's 8x8 digits 0-7 as 1x8x8 images, a small CNN of three
widths, N from 50 to 800 training images, 4-member deep ensembles and MC dropout, three seeds:
5 N x 3 widths x 2 methods x 3 seeds = 90 cells, converged budgets. OOD: the digits 8 and 9 (never
trained on), patches of scikit-learn's two sample photographs, and the test digits rotated 90°. Each
cell records its parameter count P, so the report fits laws in N at each width and in P at each N.

Full scale (a GPU cluster; RAYSWEEP_SCALE=full): CIFAR-10 from the HF hub (`uoft-cs/cifar10`) with
WideResNet-16-k, k in (1, 2, 4, 8, 10) (0.18M to 17.1M parameters), N = 50,000 / 2^j for j = 0..6
(781 to 50,000 images, random crop + flip), deep ensembles of 5 and MC dropout, 3 seeds: 7 x 5 x 2 x 3 = 210 cells.
OOD: SVHN (`ufldl-stanford/svhn`, cropped digits; the classic far-OOD set) and CIFAR-100 (near-OOD).
Without internet on the cluster, save the datasets to a shared folder first
(`load_dataset("uoft-cs/cifar10").save_to_disk("/data/vision/cifar10")`, likewise svhn with config
"cropped_digits" and cifar100) and add `--set task.root=/data/vision`.
"""

import os
from dataclasses import replace

from raysweep import Eval, Experiment, Grid, MethodOptions, Resources, Train
from raysweep.methods import dropout, ensemble
from raysweep.models.cnn import CNN
from raysweep.models.resnet import WideResNet
from raysweep.tasks.vision import Digits, Vision

local = Experiment(
    name="vision",
    # Digits 8 and 9 are never trained on: they, and patches of photographs, are the OOD sets.
    task=Digits(n_test=300, as_images=True, held_out_classes=(8, 9)),
    model=CNN(width=16, stages=2),
    grid=Grid(
        n=(50, 100, 200, 400, 800),
        sizes=(8, 16, 32),  # CNN width: channels of the first stage
        methods=("ensemble", "dropout"),
        seeds=(0, 1, 2),
        ood=("held_out_classes", "photos", "rotated"),
    ),
    # Every cell trains until its validation loss (20% of its N) stops improving: small N do not
    # memorise for a fixed 200 steps, large N are not cut short.
    train=Train(epochs=10, min_steps=60, batch_size=64, lr=5e-3, until="converged", val_fraction=0.2,
                patience_steps=40, max_epochs=60),
    methods=MethodOptions(ensemble=ensemble.Options(members=4), dropout=dropout.Options(rate=0.1, samples=16)),
)

full = replace(
    local,
    task=Vision(dataset="cifar10", augment=True),  # random crop + flip, as WideResNets are trained
    model=WideResNet(widen=4, depth=16),
    grid=replace(local.grid, n=tuple(50_000 // 2**j for j in range(6, -1, -1)), sizes=(1, 2, 4, 8, 10),
                 seeds=(0, 1, 2), ood=("svhn", "cifar100")),
    train=Train(epochs=100, min_steps=5_000, batch_size=128, lr=1e-3, weight_decay=5e-4, until="converged",
                val_fraction=0.1, patience_steps=2_000, max_epochs=200),
    eval=Eval(max_examples=10_000),
    methods=MethodOptions(ensemble=ensemble.Options(members=5), dropout=dropout.Options(rate=0.1, samples=32)),
    resources=Resources(cpus=8, gpus=1),
)

experiment = full if os.environ.get("RAYSWEEP_SCALE") == "full" else local
