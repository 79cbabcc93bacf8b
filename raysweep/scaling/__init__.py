"""Scaling laws: the catalogue, point fits through lmfit.Model, the cluster bootstrap, extrapolation.

    laws.py         the laws (plain functions with their formula), guesses, bounds, lmfit Models
    pointfit.py     fit / fit_joint / fit_many -> LawFit; profile intervals for one seed; trend
    bootstrap.py    cluster bootstrap over whole seeds (and the per-x one, for comparison)
    solver.py       the vectorised Levenberg-Marquardt the bootstraps refit with
    selection.py    AICc, or holdout error
    extrapolate.py  bands, N*, "beyond the data", holdout checks
    design.py       which cells next: the greedy c-optimal design for one extrapolated target

No torch, no pyro: numpy, scipy and lmfit only.
"""

from raysweep.scaling.bootstrap import bootstrap, bootstrap_many, resamples
from raysweep.scaling.extrapolate import (
                                          BEYOND_FACTOR,
                                          Holdout,
                                          band,
                                          beyond,
                                          holdout,
                                          holdout_check,
                                          holdout_refits,
                                          solve_for_x,
)
from raysweep.scaling.laws import CURVE_LAWS, LAWS, Law, joint_law, model, offset_law, power_law, saturating_law
from raysweep.scaling.pointfit import LawFit, aicc, fit, fit_joint, fit_many, trend, unfit
from raysweep.scaling.selection import RULE_AICC, RULE_HOLDOUT, eligible, select, select_by_holdout
from raysweep.scaling.solver import power_wls, refit_many

__all__ = ["BEYOND_FACTOR", "CURVE_LAWS", "Holdout", "LAWS", "Law", "LawFit", "RULE_AICC", "RULE_HOLDOUT",
           "aicc", "band", "beyond", "bootstrap", "bootstrap_many", "eligible", "fit", "fit_joint", "fit_many",
           "holdout", "holdout_check", "holdout_refits", "joint_law", "model", "offset_law", "power_law",
           "power_wls", "refit_many", "resamples", "saturating_law", "select", "select_by_holdout", "solve_for_x",
           "trend", "unfit"]
