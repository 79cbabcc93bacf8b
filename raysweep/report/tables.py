"""Tables from the fitted curves: one row per (curve, law) for fits.csv, the one-screen summary,
holdout coverage, and what was left out (cells and values) with the reason."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep import scaling
from raysweep.report.curves import DIFFERENTIAL_ENTROPIES, Curve, is_regression

LAW_SHORT = {"power": "pow", "saturating": "sat", "offset": "off", "joint": "joint"}


def fits_frame(fitted: list[Curve], target_eu: float | None) -> pd.DataFrame:
    rows = [row for curve in fitted for row in rows_of(curve, target_eu)]
    return pd.DataFrame(rows)


def rows_of(curve: Curve, target_eu: float | None) -> list[dict]:
    """One row per law; every row carries the curve's pure power-law exponent γ with its interval
    (comparable across methods, whatever law is chosen) and that law's own holdout checks."""
    power = curve.fits.get("power")
    gamma = _gamma(power)
    trend = scaling.trend(power) if power is not None else ""
    rows = []
    for name, law in curve.fits.items():
        row = curve.key | {"law": name, "chosen": name == curve.chosen, "chosen_aicc": name == curve.chosen_aicc,
                           "trend": trend} | gamma | _law_columns(law)
        for which, check in curve.holdouts.get(name, {}).items():
            row |= {f"holdout_{which}_x": check.held_out, f"holdout_{which}_rel_error": check.relative_error,
                    f"holdout_{which}_inside": check.inside, f"holdout_{which}_note": check.note}
        if name == curve.chosen:
            row |= _extrapolation(curve, law, target_eu)
        rows.append(row)
    return sorted(rows, key=lambda r: r["law"] != "power")  # the reference every reader knows first


def _gamma(power) -> dict:
    if power is None or not power.ok:
        return {"gamma": None, "gamma_lo": None, "gamma_hi": None}
    low, high = power.ci.get("b") or (None, None)
    return {"gamma": power.values["b"], "gamma_lo": low, "gamma_hi": high, "gamma_at_bound": "b" in power.at_bound}


def _law_columns(law: scaling.LawFit) -> dict:
    exponent = scaling.LAWS[law.law].exponents[0]
    out = {"ok": law.ok, "message": law.message, "points": law.n_points, "dropped": law.n_dropped,
           "seeds": law.n_clusters, "aic": law.aic, "aicc": law.aicc, "bic": law.bic, "ci_method": law.ci_method,
           "level": law.level, "lack_of_fit_p": law.lack_of_fit_p, "flags": "; ".join(law.flags),
           "exponent_name": exponent}
    for name in scaling.LAWS[law.law].params:
        interval = law.ci.get(name) or (None, None)
        out |= {name: law.values.get(name), f"{name}_stderr": law.stderr.get(name),
                f"{name}_lo": interval[0], f"{name}_hi": interval[1], f"{name}_at_bound": name in law.at_bound}
    return out | {f"exponent{s}": out.get(f"{exponent}{s}") for s in ("", "_stderr", "_lo", "_hi", "_at_bound")}


def _extrapolation(curve: Curve, law: scaling.LawFit, target_eu: float | None) -> dict:
    """The law at 10x the largest N (or P) run, and N* (or P*) for the target EU."""
    if not law.ok or curve.key["axis"] == "joint":
        return {}
    x10 = scaling.BEYOND_FACTOR * float(np.max(law.xs[0]))
    band = law.band([x10], kind="prediction") or ([None], [None])
    out = {"x_10x": x10, "y_10x": float(law.predict(x10)), "y_10x_lo": band[0][0], "y_10x_hi": band[1][0]}
    if target_eu is not None and curve.key["metric"] == "epistemic":
        x_star, low, high, note = scaling.solve_for_x(law, target_eu)
        out |= {"target": target_eu, "x_star": x_star, "x_star_lo": low, "x_star_hi": high, "x_star_note": note}
    return out


# ---------------------------------------------------------------- coverage and what was left out

def coverage(fits: pd.DataFrame, which: str, chosen: str = "chosen") -> tuple[int, int]:
    """(inside, checked) over the holdout checks of the chosen laws."""
    column = f"holdout_{which}_inside"
    if fits.empty or column not in fits:
        return 0, 0
    checks = fits.loc[fits[chosen], column].dropna()
    return int(checks.astype(bool).sum()), len(checks)


def left_out_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Cells not fitted (status failed or degenerate) with their reason, one row per cell."""
    bad = table[table["status"] != "ok"].drop_duplicates("cell_id")
    reason = bad["error"].fillna("").map(lambda e: str(e).strip().splitlines()[-1] if str(e).strip() else "")
    return bad.assign(reason=reason)[["cell_id", "method", "n", "size", "seed", "status", "reason"]]


def dropped_values(fitted: list[Curve]) -> pd.DataFrame:
    """Every value a curve against N left out of its log fit (non-finite or ≤ 0), by cell."""
    rows = []
    for curve in fitted:
        if curve.key["axis"] != "n":
            continue
        bad = ~(np.isfinite(curve.y) & (curve.y > 0))
        rows += [{"cell_id": cell, "method": curve.key["method"], "split": curve.key["split"],
                  "metric": curve.key["metric"], "value": value}
                 for cell, value in zip(curve.cells[bad], curve.y[bad])]
    return pd.DataFrame(rows, columns=["cell_id", "method", "split", "metric", "value"])


def shown_not_fitted(ok: pd.DataFrame) -> list[str]:
    """The differential entropies of regression tasks, which are shown and never log-fitted."""
    return [metric for metric in DIFFERENTIAL_ENTROPIES if is_regression(ok) and metric in ok]


# ---------------------------------------------------------------- the one-screen summary

# The per-cell scores the summary shows at the largest N and size (mean over seeds), in its column
# order: OOD AUROC by EU and TU, calibration before and after temperature scaling (fitted on the
# validation split), and selective prediction (risk-coverage areas). NaN where a task has none.
SUMMARY_SCORES = ("auroc_epistemic", "auroc_total", "ece", "ece_ts", "nll_ts", "temperature", "aurc", "augrc")


def summary(fits: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per method x split: γ_EU [CI] per size (with the chosen law), the SUMMARY_SCORES at the
    largest N and size (mean over seeds), holdout coverage, cells left out."""
    rows = []
    eu = fits[(fits["metric"] == "epistemic") & (fits["axis"] == "n") & fits["chosen"]] if not fits.empty else fits
    left = left_out_cells(table)
    for (method, split), group in ok.groupby(["method", "split"], sort=True):
        largest = group[group["n"] == group["n"].max()]
        if largest["size"].notna().any():
            largest = largest[largest["size"] == largest["size"].max()]
        curves = eu[(eu["method"] == method) & (eu["split"] == split)] if not eu.empty else eu
        mine = fits[(fits["method"] == method) & (fits["split"] == split)] if not fits.empty else fits
        inside_n, checked_n = coverage(mine, "n")
        inside_p, checked_p = coverage(mine, "p")
        bad = left[left["method"] == method]["status"].value_counts()
        rows.append({"method": method, "split": split,
                     "S": _samples(group), "gamma_eu": _gammas(curves),
                     **{score: _mean(largest, score) for score in SUMMARY_SCORES},
                     "holdout_inside": inside_n + inside_p,
                     "holdout_checked": checked_n + checked_p,
                     "left_out": ", ".join(f"{count} {status}" for status, count in bad.items())})
    return pd.DataFrame(rows)


def _samples(group: pd.DataFrame) -> str:
    if "samples" not in group or group["samples"].isna().all():
        return ""
    return "/".join(str(int(s)) for s in sorted(group["samples"].dropna().unique()))


def _mean(rows: pd.DataFrame, column: str) -> float:
    if column not in rows or rows[column].isna().all():
        return math.nan
    return float(rows[column].mean())


def _gammas(curves: pd.DataFrame) -> str:
    parts = []
    for r in curves.sort_values("size").to_dict("records"):
        size = "" if pd.isna(r["size"]) else f"{int(r['size'])}: "
        parts.append(f"{size}{format_interval(r, 'gamma', '.2f')} {LAW_SHORT[r['law']]}")
    return "; ".join(parts)


def format_interval(row, name: str, spec: str = ".3g") -> str:
    value, low, high = (row.get(f"{name}{s}") for s in ("", "_lo", "_hi"))
    if value is None or pd.isna(value):
        return ""
    if row.get(f"{name}_at_bound") is True:
        return f"{value:{spec}} (at bound)"
    if low is None or pd.isna(low):
        return f"{value:{spec}} [no interval]"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"
