"""report.md: the one-screen summary first, then the figures, the fitting checklist and an appendix;
fits.csv / fits.parquet / fits.json hold every (curve, law) row. One report per store: the settings
are written to settings.json, and replacing a report made with other settings says so."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from raysweep import fidelity, scaling, store, variants
from raysweep.report import members, tables
from raysweep.report import plots as plotting
from raysweep.report.curves import CURVE_ID, fit_all


def write(results_dir: str | Path, out_dir: str | Path, title: str = "raysweep report", n_boot: int = 1000,
          seed: int = 0, holdout: bool = False, target_eu: float | None = 0.01, plots: bool = True,
          workers: int = 1) -> Path:
    """Refit everything from the store and write the report; returns the path of report.md.
    The same store and settings give the same report, from `raysweep.launch` or `raysweep.fit`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"n_boot": n_boot, "seed": seed, "holdout": holdout, "target_eu": target_eu}
    replaced = _replaced(out_dir / "settings.json", settings)
    raw = store.load(results_dir).to_pandas()
    table = _configurations(raw)
    fitted_rows = table[table["status"] == "ok"]  # every axis, the members axis's sub-ensemble rows too
    fitted = fit_all(fitted_rows, n_boot, seed, holdout, workers) if len(fitted_rows) else []
    table = _all_members(table)
    ok = table[table["status"] == "ok"]
    fits = tables.fits_frame(fitted, target_eu)
    fits.to_parquet(out_dir / "fits.parquet", index=False)
    fits.to_csv(out_dir / "fits.csv", index=False)
    (out_dir / "fits.json").write_text(fits.to_json(orient="records", indent=1))
    shown = tables.shown_not_fitted(ok) if len(ok) else []
    figures = plotting.plot_all(fitted, ok, out_dir, shown) if plots and len(ok) else []
    lines = [f"# {title}", "", f"{ok['cell_id'].nunique()} cells finished, "
             f"{table[table['status'] != 'ok']['cell_id'].nunique()} failed or degenerate. "
             f"Settings: {n_boot} bootstrap resamples, seed {seed}, holdout {'on' if holdout else 'off'}."]
    if replaced:
        print(f"[raysweep] {replaced}")
        lines.append(replaced)
    with_truth = "exact" in set(ok["method"]) and len(set(ok["method"])) > 1  # a ground truth to compare with
    fidelity_table = fidelity.ratios(_all_members(raw)) if with_truth else None
    lines += [""] + summary_markdown(fits, ok, table, holdout)
    lines += fidelity.summary_notice(fidelity_table) if with_truth else []
    lines += [f"![{path.stem}]({path.name})" for path in figures] + [""]
    lines += members.section(fitted_rows, out_dir, plots)  # only where the store has grid.members rows
    if with_truth:
        lines += fidelity.section(fidelity_table, out_dir)  # with its figure
    lines += checklist(fits, ok, n_boot, holdout, shown)
    lines += appendix(fits, fitted, table, target_eu)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=1))
    return path


def _configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Each method named by its configuration, so that cells differing in anything but N, size and
    seed never share a curve (variants.labels). Sub-ensemble rows (grid.members) stay: they are the
    members axis and nothing else (curves._rows_of)."""
    return table.assign(method=variants.labels(table)) if len(table) else table


def _all_members(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each cell's whole posterior (all S), what every table and figure but the members
    axis's fits describes."""
    return table[table["members"].isna()] if "members" in table else table


def _replaced(path: Path, settings: dict) -> str:
    if not path.exists():
        return ""
    before = json.loads(path.read_text())
    if before == settings:
        return ""
    changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
    return f"This report replaces one written with other settings ({changed})."


# ---------------------------------------------------------------- the summary

# The summary's score columns: (SUMMARY_SCORES key, header with the better direction, format).
SCORE_COLUMNS = [("auroc_epistemic", "AUROC EU ↑", ".3f"), ("auroc_total", "AUROC TU ↑", ".3f"),
                 ("ece", "ECE ↓", ".3f"), ("ece_ts", "ECE TS ↓", ".3f"), ("nll_ts", "NLL TS ↓", ".3f"),
                 ("temperature", "T", ".2f"), ("aurc", "AURC ↓", ".3f"), ("augrc", "AUGRC ↓", ".3f")]
MISSING = "—"  # a score the task does not have (regression: no ECE or AURC; the test split: no AUROC)


def summary_markdown(fits: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame, holdout: bool) -> list[str]:
    lines = ["## Summary", ""]
    if fits.empty:
        return lines + ["No curve has enough points to fit yet."] + _not_learned_lines(ok) + [""]
    rows = tables.summary(fits, ok, table)
    with_s = rows["S"].astype(bool).any()
    header = (["method"] + (["S"] if with_s else []) + ["split", "γ_EU [95% CI] per size, law"]
              + [name for _, name, _ in SCORE_COLUMNS] + ["holdout inside", "left out"])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    unlearned = _not_learned_methods(ok)
    for r in rows.to_dict("records"):
        gamma = r["gamma_eu"] or "unfit"
        gamma = f"not learned (below): {gamma}" if r["method"] in unlearned else gamma
        cells = ([r["method"]] + ([r["S"]] if with_s else []) + [r["split"], gamma]
                 + [_num(r[key], spec) or MISSING for key, _, spec in SCORE_COLUMNS]
                 + [f"{r['holdout_inside']}/{r['holdout_checked']}" if r["holdout_checked"] else "", r["left_out"]])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "γ: exponent of the pure power law EU = a·N^(-γ), comparable across rows; the law chosen "
              "for the curve beside it (pow, sat = saturating, off = offset). Scores at the largest N and size, "
              "mean over seeds; ↑ higher is better, ↓ lower is better, — the task or split has none. "
              "AUROC: test against that OOD split (0.5 = chance). ECE: expected calibration error of the "
              "predictive's top-class confidence (a probability, 0-1); TS: after temperature scaling fitted on the "
              "validation split, T its temperature (T > 1: the predictive was overconfident), NLL TS in nats per "
              "prediction. AURC, AUGRC: areas under the risk-coverage and generalised risk-coverage curves of "
              "rejecting the least confident first (error rates, 0-1)."]
    lines += _coverage_lines(fits, holdout) + _left_out_lines(table) + _not_learned_lines(ok) + [""]
    return lines


# Facts a method stores per row (Method.facts) that say, past a threshold, that a cell's EU is not yet
# learned from the data: (column, threshold, what the share measures, what that means, the way out).
# Named here rather than by each method: the report is torch-free and does not import the methods.
NOT_LEARNED = [
    ("hess_init_weight", 0.05, "IVON: in {high} of {cells} cells hess_init still makes up {shares} of the Hessian "
     "estimate at the end of training", "so their EU is partly the initial guess, not learned",
     "`--set methods.ivon.beta2=0` chooses beta2 per cell so it makes up at most 1%"),
    ("scale_speed", 0.4, "VI: in {high} of {cells} cells the guide's scales still moved at {shares} of Adam's full "
     "step in the last epoch", "so their EU is where training stopped (set by the step count and the guide's "
     "initial scale), not the posterior's, and its laws in N follow the budget",
     "more steps (`train.min_steps`, `train.max_epochs`) or a larger `methods.vi.lr` let the scales settle "
     "(settled scales move at under 20%)"),
]


def _not_learned_lines(ok: pd.DataFrame) -> list[str]:
    """Where a method's EU is partly its starting point rather than learned, say so (NOT_LEARNED)."""
    lines = []
    cells = ok.drop_duplicates("cell_id")
    for column, threshold, measured, meaning, remedy in NOT_LEARNED:
        values = cells[column].dropna() if column in cells else pd.Series(dtype=float)
        high = values[values > threshold]
        if high.empty:
            continue
        shares = f"{100 * high.min():.0f}-{100 * high.max():.0f}% (median {100 * high.median():.0f}%)"
        lines.append(f"{measured.format(high=len(high), cells=len(values), shares=shares)}, {meaning}; {remedy}.")
    return lines


def _not_learned_methods(ok: pd.DataFrame) -> set[str]:
    """The methods most of whose cells are past a NOT_LEARNED threshold: their γ is the budget's."""
    cells = ok.drop_duplicates("cell_id")
    flagged = set()
    for column, threshold, *_ in NOT_LEARNED:
        if column in cells:
            share = (cells[column] > threshold).groupby(cells["method"]).mean()
            measured = cells[column].notna().groupby(cells["method"]).any()
            flagged |= set(share[(share > 0.5) & measured].index)
    return flagged


# Holdout coverage below this share of the nominal 95% (over at least COVERAGE_CHECKS points) means the
# bands understate the error of extrapolating along that axis: the report says so beside the number.
COVERAGE_FLOOR, COVERAGE_CHECKS = 0.8, 10


def _coverage_lines(fits: pd.DataFrame, holdout: bool) -> list[str]:
    if not holdout:
        return ["Holdout coverage not measured (run `python -m raysweep.fit RUN_DIR --holdout`)."]
    parts, verdicts = [], []
    for which, name in (("n", "N"), ("p", "P")):
        inside, checked = tables.coverage(fits, which)
        aicc_inside, aicc_checked = tables.coverage(fits, which, "chosen_aicc")
        if checked:
            parts.append(f"largest {name}: {inside}/{checked} ({100 * inside / checked:.0f}%) of held-out points "
                         f"inside the nominal 95% prediction band of the chosen law "
                         f"(AICc's choice: {aicc_inside}/{aicc_checked}, "
                         f"{100 * aicc_inside / max(aicc_checked, 1):.0f}%)")
        if checked >= COVERAGE_CHECKS and inside / checked < COVERAGE_FLOOR:
            verdicts.append(f"The bands understate the error of extrapolating in {name} ({100 * inside / checked:.0f}% "
                            f"covered, not 95%): treat this report's predictions beyond the largest {name} run as "
                            f"unsupported{_sizes_hint(fits) if which == 'p' else ''}.")
    return ["Holdout coverage, " + "; ".join(parts) + "." if parts else "No holdout could be made."] + verdicts


def _sizes_hint(fits: pd.DataFrame) -> str:
    sizes = fits["size"].dropna().nunique() if "size" in fits else 0
    return f" ({sizes} model sizes: a law in P is checked on {sizes - 1}; more sizes make it testable)" if sizes else ""


NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")  # a cell's own value inside a reason


def _left_out_lines(table: pd.DataFrame) -> list[str]:
    left = tables.left_out_cells(table)
    if left.empty:
        return ["No cell left out."]
    # one group per kind of reason: the numbers in a reason (each cell's own accuracy) are the appendix's
    kinds = left.assign(kind=left["reason"].map(lambda r: NUMBER.sub("…", r) if r else "no reason given"))
    parts = []
    for (status, kind), group in kinds.groupby(["status", "kind"], sort=True):
        methods = ", ".join(f"{m} {c}" for m, c in group["method"].value_counts().sort_index().items())
        parts.append(f"{len(group)} {status} ({kind}; {methods})")
    return ["Cells left out: " + "; ".join(parts) + " (appendix)."]



# ---------------------------------------------------------------- the checklist

def checklist(fits: pd.DataFrame, ok: pd.DataFrame, n_boot: int, holdout: bool, shown: list[str]) -> list[str]:
    """What arXiv 2502.18969 asks every scaling-law paper to state, filled in from this fit."""
    if fits.empty:
        return []
    laws = sorted(set(fits["law"]), key=list(scaling.LAWS).index)
    forms = "; ".join(f"{name}: {scaling.LAWS[name].formula}" for name in laws)
    bounds = "; ".join(f"{name}: " + ", ".join(_bound_text(p, lo, hi) for p, (lo, hi) in _bounds(name).items())
                       for name in laws)
    curves = fits.drop_duplicates(CURVE_ID)
    seeds = sorted(ok["seed"].dropna().unique())
    rule = scaling.RULE_HOLDOUT if holdout else scaling.RULE_AICC
    return ["## Fitting checklist", "",
            f"- Law forms: {forms}.",
            "- Loss: least squares on log y over every seed's point (unweighted); log y because the quantities "
            "are positive, span decades and their seed noise is multiplicative.",
            f"- Optimizer: lmfit.Model.fit (MINPACK Levenberg-Marquardt, `leastsq`) with bounds {bounds}; "
            "lmfit starts where a vectorised Levenberg-Marquardt from the start values below found the minimum; "
            "bootstrap refits by a vectorised Levenberg-Marquardt on the same loss, started at the point estimate "
            "(tested against scipy.optimize.least_squares).",
            "- Start values: the log-log least-squares line (power); a floor of a quarter of the smallest y, "
            "then that line (saturating); x0 = 0 (offset); the plane log(y - E) ~ log N + log P (joint).",
            f"- Points per curve: {int(curves['points'].min())}-{int(curves['points'].max())} "
            f"(median {curves['points'].median():g}); seeds: {len(seeds)} ({', '.join(str(int(s)) for s in seeds)}).",
            f"- Intervals: 95% percentile intervals from a cluster bootstrap of {n_boot} resamples of whole seeds "
            "(each seed's curve across N kept together), spread widened by sqrt(S/(S-1)); with one seed, lmfit's "
            "profile likelihood; never outside a parameter's bounds; a parameter on its bound is shown 'at bound'.",
            "- Prediction band (holdout, 10x): log f ± t(G-k) · sqrt(bootstrap variance of log f + s²/m), "
            "G distinct x, k parameters, s the residual sd, m seeds averaged.",
            f"- Selection rule: {rule}.",
            f"- Extrapolation: beyond {scaling.BEYOND_FACTOR:g}x the largest x run is reported as 'beyond the data'.",
            "- Excluded: cells whose status is not ok; non-finite or non-positive values (appendix)"
            + (f"; differential entropies {', '.join(shown)} are shown, not log-fitted" if shown else "") + ".", ""]


def _bound_text(p: str, low: float, high: float) -> str:
    if p == "x0":  # data-dependent
        return "x0 in [-0.9 min x, max x]"
    return f"{p} in [{low:g}, {high:g}]"


def _bounds(name: str) -> dict:
    sample = [np.array([1.0, 10.0])] * len(scaling.LAWS[name].independent)
    bounds = scaling.LAWS[name].bounds(*sample)
    return bounds


# ---------------------------------------------------------------- the appendix

def appendix(fits: pd.DataFrame, fitted, table: pd.DataFrame, target_eu: float | None) -> list[str]:
    if fits.empty:
        return []
    chosen = fits[fits["chosen"] & (fits["axis"] == "n")].to_dict("records")
    lines = ["## Appendix", "", "Every (curve, law) with all parameters, intervals, AICc and checks: `fits.csv`.", "",
             "### Chosen laws against N", "",
             "| method | size | split | metric | law | γ (power) [CI] | law's exponent [CI] "
             "| at 10x max N [95% PI] | trend | flags |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in chosen:
        lines.append(f"| {r['method']} | {_size(r)} | {r['split']} | {r['metric']} | {r['law']} | "
                     f"{tables.format_interval(r, 'gamma')} | "
                     f"{r['exponent_name']} = {tables.format_interval(r, 'exponent')} | "
                     f"{_prediction_at_10x(r)} | {r['trend']} | {r['flags']} |")
    lines += [""] + _x_star(chosen, target_eu) + _unfit(fits) + _left_out(table) + _dropped(fitted)
    return lines


UNINFORMATIVE = 1e3  # a band whose ends differ by more than this factor says nothing a number would


def _prediction_at_10x(r) -> str:
    low, high = r.get("y_10x_lo"), r.get("y_10x_hi")
    if low is not None and not pd.isna(low) and (low <= 0 or high / low > UNINFORMATIVE):
        return f"{r['y_10x']:.3g} [band wider than {UNINFORMATIVE:g}x: uninformative]"
    return tables.format_interval(r, "y_10x")


def _needed(r) -> str:
    """N* and its interval, with any end past BEYOND_FACTOR x the largest N run in words."""
    if r["x_star_note"]:
        return r["x_star_note"]
    limit = r["x_10x"]  # = BEYOND_FACTOR x the largest N run
    high = r.get("x_star_hi")
    upper = "" if high is None or pd.isna(high) else (f"{high:.3g}" if high <= limit else "beyond the data")
    low = r.get("x_star_lo")
    lower = "" if low is None or pd.isna(low) else f"{low:.3g}"
    return f"{r['x_star']:.3g} [{lower}, {upper}]" if upper else f"{r['x_star']:.3g}"


def _x_star(chosen, target_eu) -> list[str]:
    rows = [r for r in chosen if not pd.isna(r.get("x_star", math.nan))]
    if not rows:
        return []
    lines = [f"### N needed for epistemic uncertainty ≤ {target_eu:g} nats", "",
             "| method | size | split | largest N run | N needed [CI] |", "|---|---|---|---|---|"]
    for r in rows:
        needed = _needed(r)
        lines.append(f"| {r['method']} | {_size(r)} | {r['split']} | "
                     f"{r['x_10x'] / scaling.BEYOND_FACTOR:.4g} | {needed} |")
    return lines + [""]


def _unfit(fits) -> list[str]:
    unfit = fits[~fits["ok"].astype(bool)]
    if unfit.empty:
        return []
    lines = ["### Unfit", "", "| method | axis | split | metric | law | reason |", "|---|---|---|---|---|---|"]
    return lines + [f"| {r['method']} | {r['axis']} | {r['split']} | {r['metric']} | {r['law']} | {r['message']} |"
                    for r in unfit.to_dict("records")] + [""]


def _left_out(table) -> list[str]:
    left = tables.left_out_cells(table)
    if left.empty:
        return []
    lines = ["### Cells left out", "", "| cell | method | N | seed | status | reason |", "|---|---|---|---|---|---|"]
    return lines + [f"| {r.cell_id} | {r.method} | {r.n} | {r.seed} | {r.status} | {r.reason} |"
                    for r in left.itertuples()] + [""]


def _dropped(fitted) -> list[str]:
    dropped = tables.dropped_values(fitted)
    if dropped.empty:
        return ["No value was left out of a fit: every value was finite and positive.", ""]
    lines = [f"### Values left out of the log fits ({len(dropped)}: non-finite or not positive)", "",
             "| cell | method | split | metric | value |", "|---|---|---|---|---|"]
    return lines + [f"| {r.cell_id} | {r.method} | {r.split} | {r.metric} | {r.value:.4g} |"
                    for r in dropped.itertuples()] + [""]


def _size(r) -> str:
    return "" if pd.isna(r["size"]) else str(int(r["size"]))


def _num(value, spec: str = ".3g") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(fits: pd.DataFrame) -> str:
    """A compact terminal table: γ and the chosen law's exponent for curves against N at each
    method's largest size (or no size), and the joint laws."""
    if fits.empty:
        return "no curve fitted"
    chosen = fits[fits["chosen"] & fits["axis"].isin(["n", "joint"])]
    largest = chosen.groupby(["task", "method"], dropna=False)["size"].transform("max")
    chosen = chosen[(chosen["axis"] == "joint") | chosen["size"].isna() | (chosen["size"] == largest)]
    lines = [f"{'method':<12}{'where':<11}{'split':<10}{'metric':<14}{'law':<11}γ / exponent [interval]"]
    for r in chosen.to_dict("records"):
        where = "joint" if r["axis"] == "joint" else ("" if pd.isna(r["size"]) else f"size {int(r['size'])}")
        if not r["ok"]:
            text = f"unfit: {r['message']}"
        elif r["axis"] == "joint":
            text = f"alpha = {tables.format_interval(r, 'exponent', '.3f')}"
        else:
            text = f"γ = {tables.format_interval(r, 'gamma', '.3f')}"
        flags = f"  ({r['flags']})" if r["flags"] else ""
        lines.append(f"{r['method']:<12}{where:<11}{r['split']:<10}{r['metric']:<14}{r['law']:<11}{text}{flags}")
    return "\n".join(lines)
