"""raysweep: how predictive uncertainty scales with data (N) and model size (P)."""

from raysweep.experiment import Eval, Experiment, Grid, Resources, Train
from raysweep.methods import MethodOptions

__all__ = ["Experiment", "Grid", "Train", "Eval", "Resources", "MethodOptions"]
