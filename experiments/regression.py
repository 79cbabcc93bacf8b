"""Ground truth: Bayesian linear regression, where the exact posterior is known.

Theory: mean epistemic uncertainty ≈ d / (2N) for N ≫ d, a power law with exponent -1.
The deep ensemble of MLP regressors is measured against it. All N ≥ 10·d.
"""

from raysweep import Experiment, Grid, MethodOptions, Train
from raysweep.methods import ensemble
from raysweep.models.mlp import MLP
from raysweep.tasks.regression import LinearRegression

experiment = Experiment(
    name="regression",
    task=LinearRegression(dim=20, noise_var=0.25, prior_precision=1.0, n_test=1000),
    model=MLP(width=64, depth=2),
    grid=Grid(
        n=(200, 400, 800, 1600, 3200, 6400),
        sizes=(32, 128),
        methods=("exact", "ensemble"),
        seeds=(0, 1, 2),
        ood=("shifted",),
    ),
    train=Train(epochs=20, min_steps=400, batch_size=64, lr=3e-3),
    methods=MethodOptions(ensemble=ensemble.Options(members=5)),
)
