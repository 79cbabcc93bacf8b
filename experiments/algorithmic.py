"""Modular arithmetic (a + b mod 97) with small GPT-2 models, as in the paper's algorithmic runs.

Only the answer token is scored. OOD: operands from a range never trained on, and subtraction.
Full scale (RAYSWEEP_SCALE=full, GPU cluster): N from 500 to 6,000 equations (7 values) x 5 widths
x 2 methods x 3 seeds = 210 cells.
"""

import os
from dataclasses import replace

from raysweep import Eval, Experiment, Grid, MethodOptions, Resources, Train
from raysweep.methods import dropout, ensemble
from raysweep.models.gpt import GPT
from raysweep.tasks.algorithmic import ModularArithmetic

local = Experiment(
    name="algorithmic",
    task=ModularArithmetic(modulus=97, operation="add", ood_operation="sub", n_test=1000),
    model=GPT(n_embd=32, n_layer=1, head_dim=16),
    grid=Grid(
        n=(500, 1000, 2000, 4000),  # training equations
        sizes=(16, 32, 64),  # n_embd
        methods=("ensemble", "dropout"),
        seeds=(0, 1, 2),
        ood=("unseen_operands", "other_operation"),
    ),
    train=Train(epochs=5, min_steps=300, batch_size=64, lr=3e-3, weight_decay=0.0, until="converged",
                val_fraction=0.1, patience_steps=150, max_epochs=60),
    eval=Eval(max_examples=1000),
    methods=MethodOptions(ensemble=ensemble.Options(members=4), dropout=dropout.Options(rate=0.1, samples=8)),
)

full = replace(
    local,
    model=GPT(n_embd=128, n_layer=2, head_dim=32),
    grid=replace(local.grid, n=(500, 1000, 1500, 2000, 3000, 4500, 6000), sizes=(32, 64, 128, 256, 512),
                 seeds=(0, 1, 2)),
    train=Train(epochs=200, min_steps=5_000, batch_size=256, lr=1e-3, weight_decay=1.0),
    resources=Resources(cpus=4, gpus=0.25),  # four small cells share one GPU
)

experiment = full if os.environ.get("RAYSWEEP_SCALE") == "full" else local
