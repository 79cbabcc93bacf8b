"""Fidelity: every method on the linear-Gaussian model (models/linear.py), whose exact posterior is
known (methods/exact.py), so each method's EU / exact EU measures its inference error alone
(on the MLP of experiments/regression.py it mixes with model mismatch). The report's fidelity
section (raysweep.fidelity.section) tabulates and plots the ratios per method, N and split.

exact_meanfield is the best diagonal Gaussian (methods/exact_meanfield.py), the reference of vi and
ivon. Every method's prior precision is the task's α; the ensemble is the anchored (randomize-then-
optimize) one, whose members are exact posterior draws. The plain ensemble runs into the same store
with `--set methods.ensemble.prior=none` (its cells have other ids). Settings: Adam at lr 0.05 with
a cosine decay (anchored members) needs ~1,000 steps to reach its optimum. VI at lr 0.05 reaches
the best diagonal Gaussian in 1,000 steps up to N = 400 but not at N = 1600 (1.13x it: the report
calls it off target); `--set train.min_steps=3000` brings it to 0.96-1.04x the exact EU.

    python -m raysweep.launch experiments/fidelity.py --output runs
    python -m raysweep.launch experiments/fidelity.py --output runs --set methods.ensemble.prior=none
"""

from raysweep import Experiment, Grid, MethodOptions, Train
from raysweep.experiment import Resources
from raysweep.methods import csgld, dropout, ensemble, ivon, laplace, sghmc, swag, vi
from raysweep.models.linear import Linear
from raysweep.tasks.regression import LinearRegression

ALPHA, NOISE_VAR = 1.0, 0.25

experiment = Experiment(
    name="fidelity",
    task=LinearRegression(dim=10, noise_var=NOISE_VAR, prior_precision=ALPHA, n_test=1000),
    model=Linear(noise_var=NOISE_VAR),
    grid=Grid(
        n=(100, 400, 1600),
        sizes=(1,),  # the linear model has no size
        methods=("exact", "exact_meanfield", "ensemble", "dropout", "vi", "ivon", "laplace", "swag", "sghmc", "csgld"),
        seeds=(0, 1, 2),
        ood=("shifted",),
    ),
    train=Train(epochs=10, min_steps=1000, batch_size=64, lr=0.05),
    methods=MethodOptions(
        ensemble=ensemble.Options(members=16, prior="anchored", prior_precision=ALPHA),
        dropout=dropout.Options(rate=0.1, samples=32),
        vi=vi.Options(guide="meanfield", lr=0.05, samples=64, prior_precision=ALPHA),
        # beta2 = 0: chosen per cell so the Hessian estimate forgets hess_init (1% left after the
        # 1,000 steps); at 0.999 it kept 37% of it and EU came out 1.23-1.37x the exact
        ivon=ivon.Options(prior_precision=ALPHA, samples=64, beta2=0.0),
        laplace=laplace.Options(hessian="full", prior="fixed", prior_precision=ALPHA),
        swag=swag.Options(prior_precision=ALPHA),
        sghmc=sghmc.Options(prior_precision=ALPHA),  # the sampler's defaults otherwise
        csgld=csgld.Options(prior_precision=ALPHA),
    ),
    resources=Resources(cpus=1.0),
)
