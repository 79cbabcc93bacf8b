"""Benchmark grid for benchmarks/sweep_overhead.py: 100 small, real cells of fixed work.

Bayesian linear regression (d = 20) with a 2-member deep ensemble of small MLPs, trained for a
fixed number of optimiser steps (min_steps) at every N, so each cell does about the same amount of
work (~0.3 s on an idle core here, several times that on a loaded machine). 2 sizes x 5 N x 10 seeds = 100 cells.
"""

from raysweep import Eval, Experiment, Grid, MethodOptions, Resources, Train
from raysweep.methods import ensemble
from raysweep.models.mlp import MLP
from raysweep.tasks.regression import LinearRegression

experiment = Experiment(
    name="sweep_overhead",
    task=LinearRegression(dim=20, noise_var=0.25, prior_precision=1.0, n_test=500),
    model=MLP(width=16, depth=2),
    grid=Grid(
        n=(100, 200, 400, 800, 1600),
        sizes=(16, 32),
        methods=("ensemble",),
        seeds=tuple(range(10)),
        ood=("shifted",),
    ),
    train=Train(epochs=1, min_steps=40, batch_size=64, lr=3e-3),
    eval=Eval(max_examples=500),
    methods=MethodOptions(ensemble=ensemble.Options(members=2)),
    resources=Resources(cpus=1, max_retries=0),
)
