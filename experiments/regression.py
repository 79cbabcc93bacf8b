"""Ground truth: Bayesian linear regression, where the exact posterior is known.

Theory: mean epistemic uncertainty ≈ d / (2N) for N ≫ d, a power law with exponent -1.
Every approximate posterior on MLP regressors (Gaussian mean/variance head) is measured against it:
deep ensembles, MC dropout, Pyro VI, last-layer Laplace (noise variance taken from the task),
SWAG, SGHMC and cyclical SGLD. All N ≥ 10·d.
"""

from raysweep import Experiment, Grid, MethodOptions, Train
from raysweep.methods import csgld, dropout, ensemble, laplace, sghmc, swag, vi
from raysweep.models.mlp import MLP
from raysweep.tasks.regression import LinearRegression

experiment = Experiment(
    name="regression",
    task=LinearRegression(dim=20, noise_var=0.25, prior_precision=1.0, n_test=1000),
    model=MLP(width=64, depth=2),
    grid=Grid(
        n=(200, 400, 800, 1600, 3200, 6400),
        sizes=(32, 128),
        methods=("exact", "ensemble", "dropout", "vi", "laplace", "swag", "sghmc", "csgld"),
        seeds=(0, 1, 2),
        ood=("shifted",),
    ),
    train=Train(epochs=20, min_steps=400, batch_size=64, lr=3e-3),
    methods=MethodOptions(
        ensemble=ensemble.Options(members=5),
        dropout=dropout.Options(rate=0.1, samples=32),
        vi=vi.Options(guide="meanfield", lr=1e-2, samples=32),
        laplace=laplace.Options(hessian="full", prior="marglik"),
        # The Gaussian head's NLL is steep: SGD-based samplers need small steps here.
        swag=swag.Options(covariance="lowrank", rank=10, snapshots=20, lr=1e-3, samples=32),
        sghmc=sghmc.Options(lr=0.005, friction=0.1, burnin=0.5, samples=16),
        csgld=csgld.Options(lr=0.1, cycles=4, samples_per_cycle=4),
    ),
)
