"""Real images, offline: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

Deep ensembles and MC dropout on MLPs of three widths, N from 50 to all 1,400 training images.
OOD: the test digits rotated 90° (no longer any digit, same pixel statistics) and uniform noise.
"""

from raysweep import Experiment, Grid, MethodOptions, Train
from raysweep.methods import dropout, ensemble
from raysweep.models.mlp import MLP
from raysweep.tasks.vision import Digits

experiment = Experiment(
    name="digits",
    task=Digits(n_test=397),
    model=MLP(width=128, depth=2),
    grid=Grid(
        n=(50, 100, 200, 400, 800, 1400),
        sizes=(16, 64, 256),
        methods=("ensemble", "dropout"),
        seeds=(0, 1, 2),
        ood=("rotated", "noise"),
    ),
    train=Train(epochs=20, min_steps=300, batch_size=64, lr=2e-3),
    methods=MethodOptions(ensemble=ensemble.Options(members=5), dropout=dropout.Options(rate=0.2, samples=32)),
)
