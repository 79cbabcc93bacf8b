"""Bootstrap intervals: resample whole seeds (a cluster bootstrap) and refit every resample.

A seed's deviation is correlated across N (r = 0.22 on regression, 0.57 on digits): a seed that
is lucky at one N tends to be lucky at the next. Resampling seeds independently at each N
("per-x", kept for comparison) breaks that correlation and gives intervals too narrow; the
cluster bootstrap draws S seeds with replacement and keeps each drawn seed's whole curve.

Least squares in logs depends on the points at one x only through their weighted mean of log y,
so a resample is refitted on one weighted point per x (the same answer, several times fewer points).
The power law's resamples are solved exactly (a straight line in logs); the other laws' by the
vectorised Levenberg-Marquardt (solver.refit_many) started at the point estimate.
"""

from __future__ import annotations

import numpy as np

from raysweep.scaling import solver
from raysweep.scaling.laws import LAWS
from raysweep.scaling.pointfit import LawFit, clip_interval

SCHEMES = ("cluster", "per-x")


def bootstrap(out: LawFit, n_boot: int = 1000, scheme: str = "cluster") -> LawFit:
    """Resample, refit, keep percentile intervals at out.level. Deterministic for out.seed."""
    return bootstrap_many([out], n_boot, scheme)[0]


def bootstrap_many(outs: list[LawFit], n_boot: int = 1000, scheme: str = "cluster") -> list[LawFit]:
    """`bootstrap` of many fits: the resamples of every fit of one law (and number of distinct x)
    go through one vectorised call; rows never interact, so each fit gets what it gets alone."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown bootstrap scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    jobs = [(out, resamples(out, n_boot, scheme)) for out in outs if out.ok]
    batches: dict[tuple, list] = {}
    for out, job in jobs:
        if job is None:
            continue
        if out.law == "power":
            _keep(out, solver.power_wls(job[0][0], job[1], job[2], *_bounds(out)), scheme)
        else:
            batches.setdefault((out.law, job[1].shape[1]), []).append((out, job))
    for name, _ in batches:
        _refit_batch(LAWS[name], batches[(name, _)], scheme)
    return outs


def _refit_batch(law, batch, scheme) -> None:
    rows = [len(job[1]) for _, job in batch]
    xs = [np.concatenate([np.broadcast_to(job[0][i], job[1].shape) for _, job in batch])
          for i in range(len(law.independent))]
    Y, W = (np.concatenate([job[j] for _, job in batch]) for j in (1, 2))
    start, low, high = (np.concatenate([np.broadcast_to(v, (r, len(law.params))) for v, r in zip(column, rows)])
                        for column in zip(*((_start(out), *_bounds(out)) for out, _ in batch)))
    boot = solver.refit_many(law, xs, Y, W, start, low, high, solver.BOOT_ITERATIONS,
                             np.repeat(np.arange(len(rows)), rows), solver.BOOT_PLATEAU)
    for (out, _), part in zip(batch, np.split(boot, np.cumsum(rows)[:-1])):
        _keep(out, part, scheme)


def resamples(out: LawFit, n_boot: int, scheme: str = "cluster"):
    """(xs of each distinct x, Y, W) of every resample, one weighted point per x: (R, G) each.
    None (and a flag) when there is nothing to resample (one seed)."""
    rng = np.random.default_rng(out.seed)
    _, group = np.unique(np.column_stack(out.xs), axis=0, return_inverse=True)
    group = group.ravel()
    seeds, seed_of = np.unique(out.clusters, return_inverse=True)
    if len(seeds) < 2:
        out.flags.append("one seed: no bootstrap")
        return None
    counts = _cluster_counts(rng, len(seeds), n_boot) if scheme == "cluster" else None
    w2, logy = out.w ** 2, np.log(out.y)
    sums, logs, first = np.zeros((n_boot, group.max() + 1)), np.zeros((n_boot, group.max() + 1)), []
    for g in range(group.max() + 1):
        members = np.flatnonzero(group == g)
        if counts is None:  # per-x: draw from the seeds present at this x, independently of other x
            drawn = members[rng.integers(0, len(members), (n_boot, len(members)))]
            sums[:, g], logs[:, g] = w2[drawn].sum(axis=1), (w2[drawn] * logy[drawn]).sum(axis=1)
        else:  # cluster: each point counts as often as its seed was drawn
            times = counts[:, seed_of[members]]  # (R, members)
            sums[:, g], logs[:, g] = times @ w2[members], times @ (w2[members] * logy[members])
        first.append(members[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        # an x none of the drawn seeds reached (a failed cell) gets weight 0 in that resample
        Y = np.where(sums > 0, np.exp(logs / np.where(sums > 0, sums, 1)), 1.0)
    return [x[first] for x in out.xs], Y, np.sqrt(sums)


def _cluster_counts(rng, seeds: int, n_boot: int) -> np.ndarray:
    """How often each seed is drawn in each resample of `seeds` seeds with replacement: (R, S)."""
    drawn = rng.integers(0, seeds, (n_boot, seeds))
    return (drawn[:, :, None] == np.arange(seeds)).sum(axis=1).astype(float)


def _keep(out: LawFit, boot: np.ndarray, scheme: str) -> None:
    """Percentile intervals of the finite refits, inside the bounds. The refits' spread around the
    point estimate is widened by sqrt(S/(S-1)) for S seeds: resampling S clusters gives a spread
    (S-1)/S of the true variance, which matters at the 2-5 seeds of a sweep (2 seeds: x1.41)."""
    low, high = _bounds(out)
    boot = boot[np.all(np.isfinite(boot), axis=1)]
    if scheme == "cluster":
        logs = np.array([p in LAWS[out.law].scales for p in LAWS[out.law].params])  # amplitudes: in logs
        with np.errstate(all="ignore"):  # np.where computes both branches
            moved, centre = (np.where(logs, np.log(v), v) for v in (boot, _start(out)))
        moved = centre + np.sqrt(out.n_clusters / (out.n_clusters - 1)) * (moved - centre)
        with np.errstate(all="ignore"):
            boot = np.where(logs, np.exp(moved), moved)
        boot = boot[np.all(np.isfinite(boot), axis=1)]
    if not len(boot):  # every refit overflowed: no interval rather than a made-up one
        out.flags.append("bootstrap failed: no finite refit")
        return
    out.boot = np.clip(boot, low, high)
    tail = 100 * (1 - out.level) / 2
    lower, upper = np.percentile(out.boot, [tail, 100 - tail], axis=0)
    out.ci = {p: clip_interval((lower[j], upper[j]), out.bounds[p]) for j, p in enumerate(LAWS[out.law].params)}
    out.ci_method = f"{scheme} bootstrap"


def _start(out: LawFit) -> np.ndarray:
    return np.array([out.values[p] for p in LAWS[out.law].params])


def _bounds(out: LawFit):
    params = LAWS[out.law].params
    return tuple(np.array([out.bounds[p][i] for p in params], dtype=float) for i in (0, 1))
