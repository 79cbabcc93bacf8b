"""The curves of a store and their fits: every law, the selection, bootstraps and holdout refits.

Curves, for each (task, method, split, metric):
    axis "n"       y against N at each model size (one curve per size)
    axis "params"  y against P (parameter count) at each N, for methods that have a model
    axis "joint"   y against (N, P) with E + A·N^(-α) + B·P^(-β)
    axis "compute" y against C, the training FLOPs each cell ran (train_flops), over every N and size
    axis "members" y against m, the first m members/samples of each cell's pool (grid.members rows)
Only positive quantities are fitted in logs. Gaussian regression's total and aleatoric
uncertainty are differential entropies (they can be ≤ 0): shown, never log-fitted; its EU and the
variance forms are fitted instead.
"""

from __future__ import annotations

import json
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raysweep import scaling

CLASSIFICATION_METRICS = ("total", "aleatoric", "epistemic", "nll", "error_rate")
REGRESSION_METRICS = ("epistemic", "total_var", "aleatoric_var", "epistemic_var")
DIFFERENTIAL_ENTROPIES = ("total", "aleatoric")  # regression: shown, not log-fitted
AXES = {  # axis -> (columns that fix the other variables, the x columns)
    "n": (["task", "method", "model", "size", "split"], ["n"]),
    "params": (["task", "method", "model", "n", "split"], ["params"]),
    "joint": (["task", "method", "model", "split"], ["n", "params"]),
    "compute": (["task", "method", "model", "split"], ["train_flops"]),
    "members": (["task", "method", "model", "size", "n", "split"], ["members"]),
}
CURVE_ID = ["task", "method", "model", "split", "metric", "axis", "size", "at_n"]
HOLDOUT_DROPS = {"n": [("n", 0)], "params": [("p", 0)], "joint": [("n", 0), ("p", 1)], "compute": [], "members": []}


@dataclass(eq=False)  # hashed by identity: curves key the holdout refits
class Curve:
    key: dict  # task, method, model, split, metric, axis, size, at_n
    xs: list[np.ndarray]
    y: np.ndarray
    seeds: np.ndarray
    cells: np.ndarray  # the cell of each point, to name what is left out
    fits: dict[str, scaling.LawFit] = field(default_factory=dict)
    chosen: str | None = None  # by the selection rule in use
    chosen_aicc: str | None = None
    holdouts: dict[str, dict[str, scaling.Holdout]] = field(default_factory=dict)  # law -> which -> check

    @property
    def best(self) -> scaling.LawFit | None:
        return self.fits.get(self.chosen)

    @property
    def seed(self) -> int:
        # a seed per curve, stable across runs and machines, so no two curves share resamples
        return zlib.crc32(json.dumps(self.key, sort_keys=True, default=str).encode())


def is_regression(group: pd.DataFrame) -> bool:
    """Gaussian regression rows carry the variance forms; classification rows do not."""
    return "total_var" in group and group["total_var"].notna().any()


def fitted_metrics(group: pd.DataFrame) -> tuple[str, ...]:
    return REGRESSION_METRICS if is_regression(group) else CLASSIFICATION_METRICS


def curves(results: pd.DataFrame):
    """Every curve in the finished rows, with its x arrays, y and seeds, before any fitting."""
    for axis, (fixed, x_columns) in AXES.items():
        rows = _rows_of(results, axis)
        for key, group in rows.groupby(fixed, dropna=False, sort=True):
            key = dict(zip(fixed, key))
            if group[x_columns[-1]].nunique() < 2 or (axis in ("params", "joint") and group["params"].nunique() < 2):
                continue  # one value: there is no axis to fit along
            for metric in fitted_metrics(group):
                if metric not in group or group[metric].isna().all():
                    continue
                label = {"task": key["task"], "method": key["method"], "model": key["model"],
                         "split": key["split"], "metric": metric, "axis": axis,
                         "size": key.get("size"), "at_n": key.get("n") if axis in ("params", "members") else None}
                yield Curve(label, [group[c].to_numpy(float) for c in x_columns], group[metric].to_numpy(float),
                            group["seed"].to_numpy(), group["cell_id"].to_numpy())


def _rows_of(results: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The rows an axis fits: sub-ensemble rows (grid.members) only on the members axis; no P axis
    without a model; compute only where cells trained (train_flops > 0)."""
    members = results["members"] if "members" in results else pd.Series(np.nan, index=results.index)
    if axis == "members":
        return results[members.notna()]
    rows = results[members.isna()]
    if axis in ("params", "joint"):
        return rows[rows["size"].notna()]
    if axis == "compute":
        flops = rows["train_flops"] if "train_flops" in rows else pd.Series(np.nan, index=rows.index)
        return rows[flops > 0]
    return rows


def fit_curves(part: list[Curve], n_boot: int, seed: int, holdout: bool) -> list[Curve]:
    """Every law on every curve (lmfit), AICc's choice, the cluster bootstrap of the chosen law
    and of the power law (γ is always reported), and with `holdout` every law's holdout refit,
    which then chooses the law."""
    jobs, owners = [], []
    for curve in part:
        for law in ("joint",) if curve.key["axis"] == "joint" else scaling.CURVE_LAWS:
            jobs.append((law, curve.xs, curve.y, None, seed + curve.seed, 0.95, curve.seeds))
            owners.append((curve, law))
    for (curve, law), result in zip(owners, scaling.fit_many(jobs)):
        curve.fits[law] = result
    splits = _holdout_refits(part) if holdout else {}
    for curve in part:
        curve.chosen = curve.chosen_aicc = scaling.select(curve.fits)
        if holdout and curve.key["axis"] != "joint":
            which = "n" if curve.key["axis"] == "n" else "p"
            errors = {law: _point_error(split) for (c, law, w), split in splits.items() if c is curve and w == which}
            curve.chosen = scaling.select_by_holdout(curve.fits, errors)
    if n_boot > 0:
        wanted = {id(f): f for c in part for f in (c.best, c.fits.get("power")) if f is not None and f.ok}
        # holdout bands only for the laws reported (the choice and AICc's): every law's point refit
        # is enough to choose by holdout error
        wanted |= {id(split[0]): split[0] for (c, law, _), split in splits.items()
                   if law in (c.chosen, c.chosen_aicc) and split[0].ok}
        scaling.bootstrap_many(list(wanted.values()), n_boot)
    for (curve, law, which), split in splits.items():
        curve.holdouts.setdefault(law, {})[which] = scaling.holdout_check(*split)
    return part


def _holdout_refits(part: list[Curve]) -> dict:
    """(curve, law, which) -> the refit without the largest N (or P) and the held-out points."""
    specs, owners = [], []
    for curve in part:
        for law, fit in curve.fits.items():
            if fit.ok:
                for which, drop in HOLDOUT_DROPS[curve.key["axis"]]:
                    specs.append((curve.xs, curve.y, law, drop, fit.seed, fit.level, curve.seeds))
                    owners.append((curve, law, which))
    return {owner: split for owner, split in zip(owners, scaling.holdout_refits(specs)) if split is not None}


def _point_error(split) -> float:
    fitted, xs_out, y_out, _ = split
    if not fitted.ok:
        return float("nan")
    observed = np.exp(np.mean(np.log(y_out)))
    return float((fitted.predict(*(x[:1] for x in xs_out))[0] - observed) / observed) if len(y_out) else float("nan")


def fit_all(results: pd.DataFrame, n_boot: int = 1000, seed: int = 0, holdout: bool = False,
            workers: int = 1) -> list[Curve]:
    """Fit every curve; workers > 1 fits in that many forked processes, a metric's curves at a
    time. No curve's fit depends on which others share its batch: the same answers either way."""
    every = list(curves(results))
    groups: dict[str, list[int]] = {}
    for i, curve in enumerate(every):
        groups.setdefault(curve.key["metric"], []).append(i)
    order = list(groups.values())
    parts = in_parallel(fit_curves, [[every[i] for i in group] for group in order], workers, n_boot, seed, holdout)
    fitted = [None] * len(every)
    for group, part in zip(order, parts):
        for i, curve in zip(group, part):
            fitted[i] = curve
    return fitted


def in_parallel(function, tasks: list, workers: int, *args) -> list:
    """[function(task, *args) for task in tasks] in `workers` forked processes (fork: a spawned one
    would spend seconds importing pandas, matplotlib and lmfit again); here, one after another,
    with one worker or where fork is missing."""
    if workers <= 1 or len(tasks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(task, *args) for task in tasks]
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("fork")) as pool:
        return [future.result() for future in [pool.submit(function, task, *args) for task in tasks]]
