"""Fit every curve in the store and write the report: tables (Parquet, JSON, CSV), markdown, PNG plots.

    report.write(results_dir, out_dir, n_boot=1000, holdout=False, target_eu=0.01)
        -> out_dir/report.md, fits.parquet, fits.json, fits.csv, <metric>_vs_<n|params>.png

Curves, for each (task, method, split, metric):
    axis "n"       y against N at each model size (one curve per size)
    axis "params"  y against P (parameter count) at each N, for methods that have a model
    axis "joint"   y against (N, P) with E + A·N^(-α) + B·P^(-β)
A one-variable curve is fitted with every law in scaling.CURVE_LAWS; AIC picks one ("chosen"), and
only the chosen law is bootstrapped (1,000 resamples of the seeds within each x by default).
write(..., workers=2) fits and draws in two forked processes, one figure's curves at a time.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.ticker import LogFormatter, LogLocator

from raysweep import scaling, store
from raysweep.tasks import TASKS

UNCERTAINTIES = ("total", "aleatoric", "epistemic")
FIT_METRICS = UNCERTAINTIES + ("nll", "error_rate")
AXES = {  # axis -> (columns that fix the other variables, the x columns)
    "n": (["task", "method", "model", "size", "split"], ["n"]),
    "params": (["task", "method", "model", "n", "split"], ["params"]),
    "joint": (["task", "method", "model", "split"], ["n", "params"]),
}
X_LABEL = {"n": "training examples N", "params": "parameters P"}


def x_label(axis: str, tasks: set[str]) -> str:
    """The axis title; N is in tokens for language tasks (a task class says so with `counts_tokens`)."""
    in_tokens = {getattr(TASKS.get(task), "counts_tokens", False) for task in tasks}
    if axis != "n" or in_tokens == {False}:
        return X_LABEL[axis]
    return "training tokens N" if in_tokens == {True} else "training examples or tokens N"


@dataclass
class Curve:
    key: dict  # task, method, model, split, metric, axis, size, at_n
    xs: list[np.ndarray]
    y: np.ndarray
    fits: dict[str, scaling.LawFit] = field(default_factory=dict)
    chosen: str | None = None

    @property
    def best(self) -> scaling.LawFit | None:
        return self.fits.get(self.chosen)


# ---------------------------------------------------------------- fitting every curve

def curves(results: pd.DataFrame):
    """Every curve in the finished rows, with its x arrays and y, before any fitting."""
    has_model = results["size"].notna()
    for axis, (fixed, x_columns) in AXES.items():
        rows = results if axis == "n" else results[has_model]  # no model, no P axis
        for key, group in rows.groupby(fixed, dropna=False, sort=True):
            key = dict(zip(fixed, key))
            if axis != "n" and group["params"].nunique() < 2:
                continue  # one model size: there is no P axis to fit along
            for metric in FIT_METRICS:
                if metric not in group or group[metric].isna().all():
                    continue
                label = {"task": key["task"], "method": key["method"], "model": key["model"],
                         "split": key["split"], "metric": metric, "axis": axis,
                         "size": key.get("size"), "at_n": key.get("n") if axis == "params" else None}
                yield Curve(label, [group[c].to_numpy(float) for c in x_columns], group[metric].to_numpy(float))


def fit_curve(curve: Curve, n_boot: int, seed: int) -> Curve:
    """Every law that applies, AIC's choice, and a bootstrap of the chosen law."""
    _fit_laws([curve], seed)
    if curve.chosen and n_boot > 0:
        scaling.bootstrap(curve.best, n_boot)
    return curve


def _fit_laws(fitted: list[Curve], seed: int) -> list[Curve]:
    """Every law that applies to every curve and AIC's choice, without the bootstrap; all point fits
    go through one scaling.fit_many call (the same answers as curve by curve)."""
    jobs, owners = [], []
    for curve in fitted:
        # A seed per curve, stable across runs and machines, so no two curves share resamples.
        curve_seed = seed + zlib.crc32(json.dumps(curve.key, sort_keys=True, default=str).encode())
        laws = ("joint",) if curve.key["axis"] == "joint" else scaling.CURVE_LAWS
        for law in laws:
            jobs.append((law, curve.xs, curve.y, None, curve_seed, 0.95))
            owners.append((curve, law))
    for (curve, law), result in zip(owners, scaling.fit_many(jobs)):
        curve.fits[law] = result
    for curve in fitted:
        curve.chosen = scaling.select(curve.fits)
    return fitted


def rows_of(curve: Curve, holdout: bool | dict, target_eu: float | None) -> list[dict]:
    """One row per (curve, law); the chosen law's row also carries extrapolations and checks.
    `holdout` may be the columns of the holdout checks already computed for this curve."""
    trend = scaling.trend(curve.fits["power"]) if "power" in curve.fits else ""
    rows = []
    for name, law in curve.fits.items():
        row = curve.key | {"law": name, "chosen": name == curve.chosen, "trend": trend} | _law_columns(law)
        if name == curve.chosen:
            checks = holdout if isinstance(holdout, dict) else (_holdouts(curve, law) if holdout else {})
            row |= _extrapolation(curve, law, target_eu) | checks
        rows.append(row)
    # The pure power law first: the reference every reader knows (and tests/test_launch.py reads).
    return sorted(rows, key=lambda r: r["law"] != "power")


def _law_columns(law: scaling.LawFit) -> dict:
    exponent = scaling.LAWS[law.law].exponents[0]
    out = {"ok": law.ok, "message": law.message, "points": law.n_points, "dropped": law.n_dropped,
           "aic": law.aic, "bic": law.bic, "ci_method": law.ci_method, "level": law.level,
           "lack_of_fit_p": law.lack_of_fit_p, "flags": "; ".join(law.flags), "exponent_name": exponent}
    for name in scaling.LAWS[law.law].params:
        interval = law.ci.get(name) or (None, None)
        out |= {name: law.values.get(name), f"{name}_stderr": law.stderr.get(name),
                f"{name}_lo": interval[0], f"{name}_hi": interval[1]}
    return out | {f"exponent{suffix}": out.get(f"{exponent}{suffix}") for suffix in ("", "_stderr", "_lo", "_hi")}


def _extrapolation(curve: Curve, law: scaling.LawFit, target_eu: float | None) -> dict:
    """The law at 10× the largest N (or P) run, and N* (or P*) for the target EU."""
    if not law.ok or curve.key["axis"] == "joint":
        return {}
    x10 = 10 * float(np.nanmax(law.xs[0]))
    band = law.band([x10]) or ([None], [None])
    out = {"x_10x": x10, "y_10x": float(law.predict(x10)), "y_10x_lo": band[0][0], "y_10x_hi": band[1][0]}
    if target_eu is not None and curve.key["metric"] == "epistemic":
        x_star, low, high, note = scaling.solve_for_x(law, target_eu)
        out |= {"target": target_eu, "x_star": x_star, "x_star_lo": low, "x_star_hi": high, "x_star_note": note}
    return out


def _holdout_drops(curve: Curve):
    """Refit without the largest N (axes n, joint) and without the largest P (axes params, joint)."""
    return {"n": [("n", 0)], "params": [("p", 0)], "joint": [("n", 0), ("p", 1)]}[curve.key["axis"]]


def _holdouts(curve: Curve, law: scaling.LawFit) -> dict:
    return _holdouts_many([curve])[0]


def _holdouts_many(fitted: list[Curve]) -> list[dict]:
    """The holdout columns of every curve's chosen law. All refits are made first and bootstrapped
    together (scaling.bootstrap_many), with as many resamples as the chosen law's own bootstrap and
    the same seed; the answers are those of scaling.holdout curve by curve."""
    specs, owners = [], []  # (xs, y, law, drop, seed, level), (curve index, which, n_boot)
    for i, curve in enumerate(fitted):
        law = curve.best
        if law is None:
            continue
        for which, drop in _holdout_drops(curve):
            specs.append((law.xs, law.y, law.law, drop, law.seed, law.level))
            owners.append((i, which, 0 if law.boot is None else len(law.boot)))
    refits = [(*owner, split) for owner, split in zip(owners, scaling.holdout_refits(specs)) if split is not None]
    for n_boot in sorted({r[2] for r in refits if r[2] > 0}):
        scaling.bootstrap_many([r[3][0] for r in refits if r[2] == n_boot and r[3][0].ok], n_boot)
    out = [{} for _ in fitted]
    for i, which, _, split in refits:
        check = scaling.holdout_check(*split)
        out[i] |= {f"holdout_{which}_x": check.held_out, f"holdout_{which}_rel_error": check.relative_error,
                   f"holdout_{which}_inside": check.inside, f"holdout_{which}_note": check.note}
    return out


def fit_all(results: pd.DataFrame, n_boot: int = 1000, seed: int = 0, holdout: bool = False,
            target_eu: float | None = 0.01, workers: int = 1) -> tuple[pd.DataFrame, list[Curve]]:
    """Fit every curve: all point fits at once, then the bootstraps of all chosen laws (and of all
    holdout refits) in vectorised batches, one per law; the same answers as fit_curve one by one.
    workers > 1 fits in that many processes, a figure's curves at a time: no curve's fit depends on
    which others share its batch, so the answers are the same, to the last bits of numpy's sums
    (whose SIMD order can depend on where an array sits in memory)."""
    every = list(curves(results))
    groups = _figure_groups(every) if workers > 1 else [list(range(len(every)))]
    parts = in_parallel(_fit_part, [[every[i] for i in group] for group in groups], workers, n_boot, seed, holdout)
    fitted, checks = [None] * len(every), [None] * len(every)
    for group, (part_fitted, part_checks) in zip(groups, parts):
        for i, curve, check in zip(group, part_fitted, part_checks):
            fitted[i], checks[i] = curve, check
    rows = [row for curve, check in zip(fitted, checks) for row in rows_of(curve, check, target_eu)]
    return pd.DataFrame(rows), fitted


def fit_and_plot(results: pd.DataFrame, out_dir: Path, n_boot: int = 1000, seed: int = 0, holdout: bool = False,
                 target_eu: float | None = 0.01, workers: int = 1) -> tuple[pd.DataFrame, list[Path]]:
    """fit_all and plot_all in one pass: each task fits one figure's curves and draws that figure,
    so that no bootstrap refit has to travel between processes."""
    every = list(curves(results))
    groups = _figure_groups(every) if workers > 1 else [list(range(len(every)))]
    parts = in_parallel(_fit_and_plot_part, [[every[i] for i in group] for group in groups], workers, n_boot,
                        seed, holdout, target_eu, _style(results), out_dir)
    rows, paths = [None] * len(every), []
    for group, (part_rows, part_paths) in zip(groups, parts):
        for i, curve_rows in zip(group, part_rows):
            rows[i] = curve_rows
        paths += part_paths
    _close_canvases()
    order = [f"{metric}_vs_{axis}" for axis in ("n", "params") for metric in FIT_METRICS]
    return pd.DataFrame([row for curve_rows in rows for row in curve_rows]), sorted(paths, key=lambda p: order.index(p.stem))


def _fit_part(part: list[Curve], n_boot: int, seed: int, holdout: bool):
    fitted = _fit_laws(part, seed)
    if n_boot > 0:
        scaling.bootstrap_many([c.best for c in fitted if c.chosen], n_boot)
    return fitted, _holdouts_many(fitted) if holdout else [{} for _ in fitted]


def _fit_and_plot_part(part: list[Curve], n_boot, seed, holdout, target_eu, style, out_dir):
    fitted, checks = _fit_part(part, n_boot, seed, holdout)
    paths = [_canvas(len(style[0])).draw(*job, out_dir) for job in _figure_jobs(fitted, *style)]
    return [rows_of(curve, check, target_eu) for curve, check in zip(fitted, checks)], paths


def _figure_groups(every: list[Curve]) -> list[list[int]]:
    """The curves of each figure (a metric against N, or against P with its joint laws), the
    likely costliest first, so that the last task to start is a short one."""
    figures: dict[tuple, list[int]] = {}
    for i, curve in enumerate(every):
        figures.setdefault((curve.key["metric"], "n" if curve.key["axis"] == "n" else "params"), []).append(i)
    # Rough cost in one-variable curves: a joint law (20 (N, P) points, 5 parameters) takes ~3x as long.
    cost = {key: sum(3 if every[i].key["axis"] == "joint" else 1 for i in members) for key, members in figures.items()}
    return [figures[key] for key in sorted(figures, key=lambda k: -cost[k])]


def in_parallel(function, tasks: list, workers: int, *args) -> list:
    """[function(task, *args) for task in tasks], in `workers` forked processes, each taking the
    next task when done with one (which balances tasks of unequal cost). Fork, not spawn: a spawned
    process would spend seconds importing pandas, matplotlib and lmfit again. Where fork is missing
    (Windows, some macOS setups), or with one worker, the tasks run here one after another."""
    if workers <= 1 or len(tasks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(task, *args) for task in tasks]
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("fork")) as pool:
        return [future.result() for future in [pool.submit(function, task, *args) for task in tasks]]


# ---------------------------------------------------------------- writing

def write(results_dir: str | Path, out_dir: str | Path, title: str = "raysweep report", n_boot: int = 1000,
          seed: int = 0, holdout: bool = False, target_eu: float | None = 0.01, plots: bool = True,
          workers: int = 1) -> Path:
    """Refit everything from the store and write the report; returns the path of report.md.
    workers > 1 fits and plots in that many processes (the same report)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = store.load(results_dir).to_pandas()
    ok, failed = table[table["status"] == "ok"], table[table["status"] == "failed"]
    if len(ok) and plots:
        fits, figures = fit_and_plot(ok, out_dir, n_boot, seed, holdout, target_eu, workers)
    else:
        fits, figures = (fit_all(ok, n_boot, seed, holdout, target_eu, workers)[0] if len(ok) else pd.DataFrame()), []
    fits.to_parquet(out_dir / "fits.parquet", index=False)
    fits.to_csv(out_dir / "fits.csv", index=False)
    (out_dir / "fits.json").write_text(fits.to_json(orient="records", indent=1))
    lines = [f"# {title}", "", f"{ok['cell_id'].nunique()} cells finished, {failed['cell_id'].nunique()} failed.", ""]
    lines += markdown(fits, n_boot, target_eu)
    lines += [f"![{path.stem}]({path.name})" for path in figures] + [""]
    lines += _failed_markdown(failed)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _failed_markdown(failed: pd.DataFrame) -> list[str]:
    if failed.empty:
        return []
    lines = ["## Failed cells", "", "| cell | method | N | seed | error |", "|---|---|---|---|---|"]
    return lines + [f"| {r.cell_id} | {r.method} | {r.n} | {r.seed} | {str(r.error).splitlines()[-1] if r.error else ''} |"
                    for r in failed.itertuples()]


def _num(value, spec: str = ".3g") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _interval(row, name: str, spec: str = ".3g") -> str:
    value, low, high = (row.get(f"{name}{s}") for s in ("", "_lo", "_hi"))
    if value is None or pd.isna(value):
        return ""
    if low is None or pd.isna(low):
        return f"{value:{spec}} [interval unavailable]"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def _stderr(row) -> str:
    value = row.get("exponent_stderr")
    return "unavailable" if value is None or pd.isna(value) else f"{value:.3g}"


def _where(row) -> str:
    if row["axis"] == "n":
        return "" if pd.isna(row["size"]) else f"size {int(row['size'])}"
    return f"N={int(row['at_n'])}" if row["axis"] == "params" else "joint"


def markdown(fits: pd.DataFrame, n_boot: int, target_eu: float | None) -> list[str]:
    if fits.empty:
        return ["No curve has enough points to fit yet.", ""]
    records = fits.to_dict("records")
    chosen = [r for r in records if r["chosen"]]
    lines = ["## Scaling laws", "",
             f"Fitted on log y (least squares in logs). Intervals are {100 * records[0]['level']:.0f}% percentile "
             f"intervals from {n_boot} bootstrap resamples of the seeds within each x; where that is impossible "
             "they come from lmfit's standard errors (t interval). Law chosen by AIC (a law with more "
             "parameters must lower AIC by more than 2). Laws: power a·x^(-b); saturating a·x^(-b)+c; "
             "offset a·(x+x0)^(-b); joint E + A·N^(-α) + B·P^(-β).", "",
             "| task | method | where | split | metric | law | exponent [CI] | s.e. | ΔAIC vs power | at 10× max x [CI] | trend | flags |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    aic_power = {_curve_id(r): r["aic"] for r in records if r["law"] == "power"}
    for r in chosen:
        delta = r["aic"] - aic_power.get(_curve_id(r), math.nan)
        lines.append(f"| {r['task']} | {r['method']} | {_where(r)} | {r['split']} | {r['metric']} | {r['law']} | "
                     f"{r['exponent_name']} = {_interval(r, 'exponent')} | {_stderr(r)} | {_num(delta, '.1f')} | "
                     f"{_interval(r, 'y_10x')} | {r['trend']} | {r['flags']} |")
    lines += [""] + _unfit_markdown(records) + _dropped_markdown(records)
    lines += _x_star_markdown(chosen, target_eu) + _holdout_markdown(chosen)
    return lines


def _curve_id(r) -> tuple:
    return tuple(str(r[k]) for k in ("task", "method", "model", "split", "metric", "axis", "size", "at_n"))


def _unfit_markdown(records) -> list[str]:
    unfit = [r for r in records if not r["ok"]]
    if not unfit:
        return []
    lines = ["### Unfit", "", "| method | where | split | metric | law | reason |", "|---|---|---|---|---|---|"]
    return lines + [f"| {r['method']} | {_where(r)} | {r['split']} | {r['metric']} | {r['law']} | {r['message']} |"
                    for r in unfit] + [""]


def _dropped_markdown(records) -> list[str]:
    dropped = [r for r in records if r["law"] == "power" and r["dropped"] > 0]
    if not dropped:
        return ["No value was dropped: every value was finite and positive.", ""]
    lines = ["### Dropped values (non-finite or not positive)", "", "| method | where | split | metric | dropped | kept |",
             "|---|---|---|---|---|---|"]
    return lines + [f"| {r['method']} | {_where(r)} | {r['split']} | {r['metric']} | {r['dropped']} | {r['points']} |"
                    for r in dropped] + [""]


def _x_star_markdown(chosen, target_eu) -> list[str]:
    rows = [r for r in chosen if not pd.isna(r.get("x_star", math.nan))]
    if not rows:
        return []
    lines = [f"### How much more until epistemic uncertainty ≤ {target_eu:g} nats", "",
             "| method | where | split | axis | largest run | needed [CI] | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        needed = _interval(r, "x_star", ".3g") if math.isfinite(r["x_star"]) else "inf"
        lines.append(f"| {r['method']} | {_where(r)} | {r['split']} | {r['axis']} | {r['x_10x'] / 10:.3g} | "
                     f"{needed} | {r['x_star_note']} |")
    return lines + [""]


def _holdout_markdown(chosen) -> list[str]:
    lines = []
    for which, name in (("n", "N"), ("p", "P")):
        rows = [r for r in chosen if not pd.isna(r.get(f"holdout_{which}_x", math.nan))]
        if not rows:
            continue
        lines += [f"### Extrapolation check: refit without the largest {name}, predict it", "",
                  f"| method | where | split | metric | law | held-out {name} | relative error | inside band |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            inside = r[f"holdout_{which}_inside"]
            inside = "no band" if inside is None or pd.isna(inside) else ("yes" if inside else "**no**")
            error = r[f"holdout_{which}_note"] or f"{100 * r[f'holdout_{which}_rel_error']:+.1f}%"
            lines.append(f"| {r['method']} | {_where(r)} | {r['split']} | {r['metric']} | {r['law']} | "
                         f"{r[f'holdout_{which}_x']:.4g} | {error} | {inside} |")
        lines.append("")
    return lines


def table(fits: pd.DataFrame) -> str:
    """A compact terminal table: the chosen law's exponent with its interval, curves against N at each
    method's largest size (or no size) and the joint laws."""
    if fits.empty:
        return "no curve fitted"
    chosen = fits[fits["chosen"] & fits["axis"].isin(["n", "joint"])]
    largest = chosen.groupby(["task", "method"], dropna=False)["size"].transform("max")
    chosen = chosen[(chosen["axis"] == "joint") | chosen["size"].isna() | (chosen["size"] == largest)]
    lines = [f"{'method':<12}{'where':<11}{'split':<10}{'metric':<11}{'law':<11}exponent [interval]"]
    for r in chosen.to_dict("records"):
        text = _interval(r, "exponent", ".3f") if r["ok"] else f"unfit: {r['message']}"
        flags = f"  ({r['flags']})" if r["flags"] else ""
        lines.append(f"{r['method']:<12}{_where(r):<11}{r['split']:<10}{r['metric']:<11}{r['law']:<11}"
                     f"{r['exponent_name']} = {text}{flags}")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def plot_all(ok: pd.DataFrame, fitted: list[Curve], out_dir: Path, workers: int = 1) -> list[Path]:
    """One figure per (metric, axis): an ID panel and an OOD panel side by side, methods as colours,
    the other variable (model size for curves against N, N for curves against P) as marker shapes,
    one legend for both outside the panels. workers > 1 draws them in that many processes."""
    paths = in_parallel(_plot_job, figure_jobs(ok, fitted), workers, out_dir)
    _close_canvases()
    return paths


def _plot_job(job: tuple, out_dir: Path) -> Path:
    return _canvas(len(job[1])).draw(*job, out_dir)


def _plot_part(jobs: list[tuple], out_dir: Path) -> list[Path]:
    """Draw figures one after another on one fresh canvas."""
    if not jobs:
        return []
    canvas = _Canvas(len(jobs[0][1]))
    try:
        return [canvas.draw(*job, out_dir) for job in jobs]
    finally:
        plt.close(canvas.fig)


_CANVASES: dict[int, "_Canvas"] = {}  # by number of panels, reused for every figure this process draws


def _canvas(panels: int) -> "_Canvas":
    if panels not in _CANVASES:
        _CANVASES[panels] = _Canvas(panels)
    return _CANVASES[panels]


def _close_canvases() -> None:
    for canvas in _CANVASES.values():
        plt.close(canvas.fig)
    _CANVASES.clear()


def figure_jobs(ok: pd.DataFrame, fitted: list[Curve]) -> list[tuple]:
    """(chosen curves, splits, colours, axis, metric) of every figure plot_all draws."""
    return _figure_jobs(fitted, *_style(ok))


def _style(ok: pd.DataFrame) -> tuple[list, dict]:
    """The panels (ID 'test' first) and a colour per method, the same in every figure."""
    splits = sorted(ok["split"].dropna().unique(), key=lambda s: (s != "test", s))
    methods = sorted(ok["method"].unique())
    palette = plt.cm.tab10 if len(methods) <= 10 else plt.cm.tab20
    return splits, {m: palette(i % palette.N) for i, m in enumerate(methods)}


def _figure_jobs(fitted: list[Curve], splits, colours) -> list[tuple]:
    jobs = []
    for axis in ("n", "params"):
        for metric in FIT_METRICS:
            chosen = [c for c in fitted if c.key["axis"] == axis and c.key["metric"] == metric]
            if chosen:
                jobs.append((chosen, splits, colours, axis, metric))
    return jobs


def _where_value(curve: Curve):
    value = curve.key["size"] if curve.key["axis"] == "n" else curve.key["at_n"]
    return None if value is None or pd.isna(value) else int(value)


class _Canvas:
    """One figure and its panels, reused for every metric: matplotlib builds tick marks and
    labels lazily, a few hundred objects per log axis, and building them again for each of ten
    figures was a third of the plotting time."""

    def __init__(self, panels: int):
        self.width = 4.6 * panels + 2.2  # the legend gets its own column on the right
        self.fig, axes = plt.subplots(1, panels, figsize=(self.width, 4), squeeze=False, sharey=True)
        self.axes = axes[0]
        for ax in self.axes:
            ax.set(xscale="log", yscale="log")
            for side in (ax.xaxis, ax.yaxis):  # plain numbers instead of mathtext powers of ten
                side.set_major_formatter(_PlainLog())
                side.set_minor_formatter(_PlainLog())
            # x always spans a decade or more (the law is drawn to 10x the largest x run): minor
            # ticks at 2 and 5 suffice there, and every tick is a few matplotlib objects to draw.
            ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        # Fixed margins instead of tight_layout, which draws the whole figure once more to measure it.
        self.fig.subplots_adjust(left=0.95 / self.width, right=1 - 2.2 / self.width, bottom=0.13,
                                 top=0.88, wspace=0.05)

    def clear(self) -> None:
        for ax in self.axes:
            for artist in [*ax.lines, *ax.collections]:
                artist.remove()
            ax.relim()
        for legend in list(self.fig.legends):
            legend.remove()

    def draw(self, chosen: list[Curve], splits, colours, axis: str, metric: str, out_dir: Path) -> Path:
        self.clear()
        wheres = sorted({_where_value(c) for c in chosen}, key=lambda v: (v is None, v or 0))
        markers = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(wheres)}
        label = x_label(axis, {c.key["task"] for c in chosen})
        for ax, split in zip(self.axes, splits):
            _draw_panel(ax, [c for c in chosen if c.key["split"] == split], colours, markers)
            kind = "ID" if split == "test" else "OOD"
            ax.set(xlabel=label, title=f"{split} ({kind})")
            ax.autoscale_view()
        self.axes[0].set_ylabel(metric)
        methods = sorted({c.key["method"] for c in chosen})
        legend = self.fig.legend(handles=_legend_handles(methods, colours, wheres, markers, axis),
                                 loc="center left", bbox_to_anchor=(1 - 2.1 / self.width, 0.5), fontsize=7,
                                 frameon=False)
        for text in legend.get_texts():
            if text.get_text() in LEGEND_HEADERS.values():
                text.set_fontweight("bold")
        self.fig.suptitle(f"{metric} vs {label}", fontsize=9)
        path = out_dir / f"{metric}_vs_{axis}.png"
        # Fastest zlib level: small line plots, and encoding was a tenth of the plotting time.
        self.fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
        return path


LEGEND_HEADERS = {"method": "method", "n": "model size", "params": "N", "drawn": "drawn"}


def _legend_handles(methods, colours, wheres, markers, axis: str) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def header(text):
        return Line2D([], [], ls="none", label=text)

    handles = [header(LEGEND_HEADERS["method"])] + [Line2D([], [], color=colours[m], lw=2, label=m) for m in methods]
    handles += [header(LEGEND_HEADERS[axis])]
    handles += [Line2D([], [], ls="none", marker=markers[v], color="0.35", ms=5,
                       label="none" if v is None else f"{v:,}") for v in wheres]
    handles += [header(LEGEND_HEADERS["drawn"]), Line2D([], [], ls="none", marker=".", color="0.35", alpha=0.5, label="seeds"),
                Line2D([], [], ls="none", marker="o", color="0.35", ms=5, label="mean over seeds"),
                Line2D([], [], ls="none", marker="o", mfc="none", color="0.35", ms=5, label="mean, law unfit"),
                Line2D([], [], color="0.35", label="chosen law"),
                Line2D([], [], color="0.35", ls="--", label="extrapolation to 10×"),
                Patch(color="0.35", alpha=0.2, label="95% confidence band")]
    return handles


class _PlainLog(LogFormatter):
    """Log-axis tick labels as plain numbers (0.003, 250, 4k, 1.5M) on the ticks matplotlib's own
    log formatter would label: easier to read than 10^x, and parsing mathtext was a large share
    of the plotting time."""

    def __call__(self, x, pos=None):
        if not super().__call__(x, pos):
            return ""
        for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= limit:
                return f"{x / limit:g}{suffix}"
        return f"{x:g}"


def _draw_panel(ax, chosen: list[Curve], colours, markers) -> None:
    """Seeds as dots, the geometric mean over seeds at each x as the curve's marker, the chosen law
    as a line (dashed beyond the data, to 10x) with its confidence band. Each method's dots and
    lines are one artist (curves split by NaN), and all bands one collection: matplotlib's cost
    is per artist, and one per curve and element made the plots a third of the report's time."""
    seeds, lines, beyond, bands, band_colours = {}, {}, {}, [], []
    for curve in chosen:
        colour, drawn = colours[curve.key["method"]], _curve_drawing(curve)
        if drawn is None:
            continue
        (x, y), (xs, means), law = drawn
        _append(seeds, colour, x, y)
        fitted = law is not None and law.ok
        ax.plot(xs, means, ls="none", marker=markers[_where_value(curve)], ms=4.5, color=colour,
                mfc=colour if fitted else "none")
        if not fitted:
            continue
        inside, outside = np.geomspace(xs.min(), xs.max(), 30), np.geomspace(xs.max(), 10 * xs.max(), 15)
        _append(lines, colour, inside, law.predict(inside))
        _append(beyond, colour, outside, law.predict(outside))
        grid = np.concatenate([inside, outside])
        band = law.band(grid)
        if band is not None:
            bands.append(np.column_stack([np.r_[grid, grid[::-1]], np.r_[band[0], band[1][::-1]]]))
            band_colours.append(colour)
    for colour, (x, y) in seeds.items():
        ax.plot(x, y, ls="none", marker=".", ms=3, mew=0, color=colour, alpha=0.4)
    for style, drawn in (("-", lines), ("--", beyond)):
        for colour, (x, y) in drawn.items():
            ax.plot(x, y, style, color=colour, lw=1.1)
    if bands:
        # Limits given directly: a patch (ax.fill) walks every Bezier segment of its outline to find them.
        ax.add_collection(PolyCollection(bands, facecolors=band_colours, alpha=0.12, linewidths=0), autolim=False)
        ax.update_datalim(np.concatenate(bands))


def _curve_drawing(curve: Curve):
    """((seed x, seed y), (distinct x, geometric means), chosen law) of the finite positive points."""
    x, y = curve.xs[0], curve.y
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    if not keep.any():
        return None
    x, y = x[keep], y[keep]
    xs = np.unique(x)
    return (x, y), (xs, np.array([np.exp(np.mean(np.log(y[x == v]))) for v in xs])), curve.best


def _append(by_colour: dict, colour, x, y) -> None:
    """Add a curve to its colour's polyline, a NaN apart from the one before (a break in the line)."""
    old_x, old_y = by_colour.get(colour, (np.empty(0), np.empty(0)))
    by_colour[colour] = (np.r_[old_x, np.nan, x], np.r_[old_y, np.nan, y]) if len(old_x) else (x, y)
