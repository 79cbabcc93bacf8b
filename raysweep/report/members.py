"""The sub-ensemble section of the report: does EU grow with the ensemble size m as it would for m
independent posterior draws?

The plug-in mutual information of m i.i.d. draws is biased low: to first order in the members'
spread, E[EU(m)] = EU_∞ · (m-1)/m, the factor of a variance with divisor m (docs/design.md §2).
grid.members rows hold EU(m) of nested sub-ensembles of each cell's pool. Per (task, method
variant, model, size, N, split), every seed's cell one replicate (variants are never pooled: the
report names them apart before this runs):

    EU_∞       least squares of EU(m) on x = (m-1)/m through the origin, over every seed's points
    captured   EU(M) / EU_∞ at the largest m run, mean over seeds; (M-1)/M where the law holds
    κ          the shape, from EU(m) = a - b/m fitted freely: κ = b/a, 1 on the law (a line in x through 0);
               κ < 1 flattens early: extra members add less than independent draws would (EU saturating,
               the collapse Kirsch, TMLR 2025, describes); κ > 1 grows faster (the first members more alike
               than later ones, e.g. a chain's consecutive samples, or spreads past the first-order law)
    verdict    "follows" unless κ's 95% interval over seeds lies wholly outside 1 ± TOLERANCE

m = 1 is left out of every fit: one member has EU = 0 by construction, which would pin a - b/m to the
law it is meant to test. The entropy form of EU is used for regression too (first order:
½ log(1 + var μ/σ²) ≈ var μ/(2σ²), and var μ with divisor m has exactly the (m-1)/m factor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from raysweep.report import plots as plotting
from raysweep.report.curves import AXES

GROUP = AXES["members"][0]  # task, method, model, size, n, split: what the members axis fixes
MIN_M = 3  # distinct m >= 2: a one-parameter law and its two-parameter alternative leave a residual
# The exact plug-in MI of i.i.d. draws departs from (m-1)/m at second order, always towards κ > 1:
# κ ≈ 1 + 0.3·EU_∞ for Dirichlet and logit-normal populations (κ 1.09 at EU_∞ = 0.33 nats, 1.19 at 0.76;
# tests/test_members.py). A departure past 0.2 is then not the law's own error for any EU below about
# 0.7 nats; seed noise is added on top by κ's interval.
TOLERANCE = 0.2
COLUMNS = GROUP + ["seeds", "m", "eu_inf", "eu_inf_lo", "eu_inf_hi", "captured", "expected", "kappa", "kappa_lo",
                   "kappa_hi", "rms", "verdict", "note"]


def sub_ensembles(rows: pd.DataFrame) -> pd.DataFrame:
    """The finished grid.members rows with m >= 2 and a finite EU, one per (cell, split, m)."""
    if "members" not in rows or rows["members"].isna().all():
        return rows.iloc[:0]
    keep = (rows["status"] == "ok") & (rows["members"] >= 2) & np.isfinite(rows["epistemic"].astype(float))
    return rows[keep]


def table(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per group with the diagnosis, every point with x = (m-1)/m and EU(m)/EU_∞ for the figure)."""
    diagnoses, points = [], []
    for key, group in sub_ensembles(rows).groupby(GROUP, dropna=False, sort=True):
        found = diagnose(group["cell_id"].to_numpy(), group["members"].to_numpy(float),
                         group["epistemic"].to_numpy(float))
        diagnoses.append(dict(zip(GROUP, key)) | found)
        if np.isfinite(found["eu_inf"]) and found["eu_inf"] > 0:
            m = group["members"].to_numpy(float)
            points.append(group[GROUP + ["seed"]].assign(x=(m - 1) / m, scaled=group["epistemic"] / found["eu_inf"]))
    return (pd.DataFrame(diagnoses, columns=COLUMNS),
            pd.concat(points) if points else pd.DataFrame(columns=GROUP + ["seed", "x", "scaled"]))


def diagnose(cells: np.ndarray, m: np.ndarray, eu: np.ndarray) -> dict:
    """One group: EU_∞ and κ pooled over its cells (seeds), their 95% intervals from the spread of the
    per-cell values, the share of EU_∞ the largest ensemble captures and the verdict."""
    ms = np.unique(m)
    out = {"seeds": len(np.unique(cells)), "m": ", ".join(str(int(v)) for v in ms)}
    if len(ms) < MIN_M:
        return out | _blank(f"needs EU at {MIN_M} or more distinct m >= 2")
    eu_inf, kappa = _through_origin(m, eu), _shape(m, eu)
    if not eu_inf > 0:
        return out | _blank("EU(m) is not positive: nothing to compare")
    per_cell = [(_through_origin(m[cells == c], eu[cells == c]), _shape(m[cells == c], eu[cells == c]))
                for c in np.unique(cells) if len(np.unique(m[cells == c])) >= MIN_M]
    inf_lo, inf_hi = _interval(eu_inf, [e for e, _ in per_cell])
    kappa_lo, kappa_hi = _interval(kappa, [k for _, k in per_cell])
    largest = m == ms[-1]
    captured = float(np.mean(eu[largest])) / eu_inf
    rms = float(np.sqrt(np.mean((eu - eu_inf * (m - 1) / m) ** 2))) / eu_inf
    note = "" if len(per_cell) >= 2 else "one seed: no interval"
    return out | {"eu_inf": eu_inf, "eu_inf_lo": inf_lo, "eu_inf_hi": inf_hi, "captured": captured,
                  "expected": (ms[-1] - 1) / ms[-1], "kappa": kappa, "kappa_lo": kappa_lo, "kappa_hi": kappa_hi,
                  "rms": rms, "verdict": verdict(kappa, kappa_lo, kappa_hi), "note": note}


def _through_origin(m: np.ndarray, eu: np.ndarray) -> float:
    x = (m - 1) / m
    return float(x @ eu / (x @ x))


def _shape(m: np.ndarray, eu: np.ndarray) -> float:
    """κ = b/a of EU(m) = a - b/m by least squares; a line in x = 1 - 1/m, so κ = 1 - (its value at m = 1)/a."""
    design = np.stack([np.ones_like(m), -1 / m], axis=1)  # (points, 2)
    (a, b), *_ = np.linalg.lstsq(design, eu, rcond=None)
    return float(b / a) if a > 0 else float("nan")


def _interval(pooled: float, per_cell: list[float]) -> tuple[float, float]:
    """pooled ± t(k-1) · sd/√k over the k cells' own estimates (seeds are the replicates); none for k < 2."""
    values = np.asarray([v for v in per_cell if np.isfinite(v)])
    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return pooled - half, pooled + half


def verdict(kappa: float, low: float, high: float) -> str:
    """Departs only when the whole interval (the point without one) lies outside 1 ± TOLERANCE."""
    if not np.isfinite(kappa):
        return "no shape: the free fit's EU_∞ is not positive"
    low, high = (kappa, kappa) if not np.isfinite(low) else (low, high)
    if high < 1 - TOLERANCE:
        return "flattens early"
    if low > 1 + TOLERANCE:
        return "grows faster"
    return "follows"


def _blank(reason: str) -> dict:
    return {name: float("nan") for name in COLUMNS[len(GROUP) + 2:-2]} | {"verdict": "not fitted", "note": reason}


# ---------------------------------------------------------------- the section

def section(rows: pd.DataFrame, out_dir: str | Path, plots: bool = True) -> list[str]:
    """Markdown lines of the section (none without grid.members rows); writes members.csv and,
    with plots, members_eu.png into out_dir."""
    if sub_ensembles(rows).empty:
        return []
    out_dir = Path(out_dir)
    diagnoses, points = table(rows)
    diagnoses.to_csv(out_dir / "members.csv", index=False)
    lines = ["## Sub-ensembles: EU(m) against (m-1)/m", "",
             "The plug-in EU of m independent posterior draws is biased low by (m-1)/m to first order, so "
             "EU(m) = EU_∞·(m-1)/m over each pool's nested sub-ensembles (grid.members rows, m >= 2; m = 1 "
             "has EU = 0 by construction). EU_∞: least squares of EU(m) on (m-1)/m through the origin over every "
             "seed's points. captured: EU at the largest m / EU_∞, mean over seeds (the law: (M-1)/M). κ: b/a of "
             "EU(m) = a - b/m fitted freely, 1 where EU follows (m-1)/m, below 1 where it flattens early (extra "
             "members add less than independent draws would: EU saturating), above 1 where it grows faster "
             "(the first members more alike than later ones, or spreads past the first-order law). Verdict: "
             f"'follows' unless κ's 95% interval over seeds lies wholly outside 1 ± {TOLERANCE:g} (i.i.d. draws "
             "reach κ ≈ 1 + 0.3·EU_∞ at second order). rms: the residual of the (m-1)/m fit, a fraction of EU_∞. "
             "Every group: `members.csv`.", ""]
    fitted = diagnoses[diagnoses["verdict"] != "not fitted"]
    if fitted.empty:
        reasons = "; ".join(f"{note} (m = {m})" for (note, m), _ in diagnoses.groupby(["note", "m"]))
        return lines + [f"Not fitted: {reasons}. Add sizes to grid.members to check EU against (m-1)/m.", ""]
    counts = fitted["verdict"].value_counts()
    lines += [f"{len(fitted)} of {len(diagnoses)} groups fitted: "
              + ", ".join(f"{count} {name}" for name, count in counts.items()) + ".", ""]
    lines += _markdown_table(diagnoses)
    if plots and not points.empty:
        lines += [f"![members]({plotting.members_figure(points, out_dir).name})", ""]
    return lines


def _markdown_table(diagnoses: pd.DataFrame) -> list[str]:
    lines = ["| method | split | size | N | seeds | m | EU_∞ [95% CI] | captured (law) | κ [95% CI] | rms | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in diagnoses.sort_values(["method", "split", "size", "n"]).to_dict("records"):
        size = "" if pd.isna(r["size"]) else str(int(r["size"]))
        verdict_text = r["verdict"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['method']} | {r['split']} | {size} | {int(r['n'])} | {r['seeds']} | {r['m']} | "
                     f"{_interval_text(r, 'eu_inf', '.3g')} | {_num(r['captured'], '.3f')} "
                     f"({_num(r['expected'], '.3f')}) | {_interval_text(r, 'kappa', '.2f')} | "
                     f"{_num(r['rms'], '.1%')} | {verdict_text} |")
    return lines + [""]


def _interval_text(r: dict, name: str, spec: str) -> str:
    value, low, high = r[name], r[f"{name}_lo"], r[f"{name}_hi"]
    if pd.isna(value):
        return "—"
    return f"{value:{spec}}" + ("" if pd.isna(low) else f" [{low:{spec}}, {high:{spec}}]")


def _num(value, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)
