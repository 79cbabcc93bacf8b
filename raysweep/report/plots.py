"""Figures as small multiples: one figure per metric against N (and the sub-ensembles' EU(m)/EU_∞
against (m-1)/m), one panel per (split, method), model sizes as colours. The y range is set by the
data (extrapolated lines and bands are clipped to it); bands are drawn, and listed in the legend,
only where a bootstrap computed them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter

from raysweep import scaling
from raysweep.report.curves import Curve

MARGIN = 1.6  # the y range: the data's, widened by this factor each way on a log axis


def x_label(units: set[str]) -> str:
    """The N axis title from the store's n_unit column (missing in old stores: examples)."""
    if units == {"tokens"}:
        return "training tokens N"
    return "training examples N" if units <= {"examples"} else "training examples or tokens N"


def plot_all(fitted: list[Curve], ok: pd.DataFrame, out_dir: Path, shown: list[str]) -> list[Path]:
    """One PNG per metric against N (fitted ones with their laws; `shown` ones as data only)."""
    splits = sorted(ok["split"].dropna().unique(), key=lambda s: (s != "test", s))
    methods = sorted(ok["method"].unique())
    colours = size_colours(ok)
    units = set(ok["n_unit"].fillna("examples")) if "n_unit" in ok else {"examples"}
    paths = []
    metrics = list(dict.fromkeys(c.key["metric"] for c in fitted if c.key["axis"] == "n"))
    for metric in metrics + shown:
        chosen = [c for c in fitted if c.key["axis"] == "n" and c.key["metric"] == metric]
        paths.append(_figure(metric, chosen, ok, splits, methods, colours, x_label(units), out_dir, metric in shown))
    return paths


def size_colours(rows: pd.DataFrame) -> dict:
    """Model size -> colour (viridis, small to large), None (no model) -> grey: the same in every figure."""
    sizes = sorted(int(s) for s in rows["size"].dropna().unique())
    return {s: plt.cm.viridis(i / max(len(sizes) - 1, 1) * 0.85) for i, s in enumerate(sizes)} | {None: "0.3"}


def _figure(metric, chosen, ok, splits, methods, colours, xlabel, out_dir, data_only) -> Path:
    fig, axes = plt.subplots(len(splits), len(methods), figsize=(2.3 * len(methods) + 1.6, 2.0 * len(splits) + 0.8),
                             squeeze=False, sharex=True, sharey="row")
    banded = False
    for i, split in enumerate(splits):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            rows = ok[(ok["split"] == split) & (ok["method"] == method)]
            if data_only:
                _data_only(ax, rows, metric, colours)
            else:
                banded |= _panel(ax, [c for c in chosen if c.key["split"] == split and c.key["method"] == method],
                                 colours)
            if i == 0:
                ax.set_title(method, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{split}\n{metric}", fontsize=8)
            if i == len(splits) - 1:
                ax.set_xlabel(xlabel, fontsize=7)
            ax.tick_params(labelsize=6)
        _y_range(axes[i], ok[ok["split"] == split], metric, data_only)
    fig.legend(handles=_legend(colours, banded, data_only), loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"{metric} vs N" + (" (differential entropy: shown, not fitted)" if data_only else ""), fontsize=9)
    _leave_room_for_titles(fig)
    path = out_dir / f"{metric}_vs_n.png"
    fig.savefig(path, dpi=90, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return path


def _panel(ax, curves: list[Curve], colours) -> bool:
    """Seeds as dots, the geometric mean at each N as markers, the chosen law solid over the data
    and dashed to 10x beyond it, its 95% confidence band where bootstrapped. True if a band was drawn."""
    ax.set(xscale="log", yscale="log")
    for side in (ax.xaxis, ax.yaxis):
        side.set_major_formatter(_PlainLog())
        side.set_minor_formatter(_PlainLog())
    banded = False
    for curve in curves:
        size = None if pd.isna(curve.key["size"]) else int(curve.key["size"])
        colour = colours[size]
        x, y = curve.xs[0], curve.y
        keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
        if not keep.any():
            continue
        x, y = x[keep], y[keep]
        ax.plot(x, y, ls="none", marker=".", ms=2.5, color=colour, alpha=0.4)
        xs = np.unique(x)
        ax.plot(xs, [np.exp(np.mean(np.log(y[x == v]))) for v in xs], ls="none", marker="o", ms=3, color=colour)
        law = curve.best
        if law is None or not law.ok:
            continue
        inside = np.geomspace(xs.min(), xs.max(), 30)
        outside = np.geomspace(xs.max(), scaling.BEYOND_FACTOR * xs.max(), 15)
        ax.plot(inside, law.predict(inside), "-", color=colour, lw=1)
        ax.plot(outside, law.predict(outside), "--", color=colour, lw=1)
        grid = np.concatenate([inside, outside])
        band = law.band(grid)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color=colour, alpha=0.15, lw=0)
            banded = True
    return banded


def _data_only(ax, rows: pd.DataFrame, metric: str, colours) -> None:
    ax.set_xscale("log")
    for size, group in rows.groupby(rows["size"].fillna(-1)):
        means = group.groupby("n")[metric].mean()
        colour = colours[None if size == -1 else int(size)]
        ax.plot(group["n"], group[metric], ls="none", marker=".", ms=2.5, color=colour, alpha=0.4)
        ax.plot(means.index, means.to_numpy(), "-o", ms=3, lw=1, color=colour)


def _y_range(axes, rows: pd.DataFrame, metric: str, data_only: bool) -> None:
    """Set by the data: an extrapolated line or band never stretches the axis (EU to 1e-10)."""
    values = rows[metric].to_numpy(float) if metric in rows else np.array([])
    values = values[np.isfinite(values) & ((values > 0) | data_only)]
    if not len(values):
        return
    low, high = values.min(), values.max()
    if data_only:
        pad = 0.1 * (high - low or 1)
        axes[0].set_ylim(low - pad, high + pad)
    else:
        axes[0].set_ylim(low / MARGIN, high * MARGIN)


def _legend(colours, banded: bool, data_only: bool) -> list:
    handles = _size_handles(colours)
    handles += [Line2D([], [], ls="none", marker=".", color="0.35", label="seeds"),
                Line2D([], [], ls="none", marker="o", color="0.35", ms=3, label="mean over seeds")]
    if not data_only:
        handles += [Line2D([], [], color="0.35", label="chosen law"),
                    Line2D([], [], color="0.35", ls="--", label=f"extrapolation to {scaling.BEYOND_FACTOR:g}x")]
    if banded:
        handles.append(Patch(color="0.35", alpha=0.2, label="95% confidence band"))
    return handles


def _leave_room_for_titles(fig) -> None:
    """Margins in inches, not fractions, so the figure title, the column titles, the row labels and the
    legend keep their room whatever the grid of panels (a fixed top=0.9 overlapped them on one row)."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=0.7 / width, right=1 - 1.4 / width, bottom=0.45 / height, top=1 - 0.55 / height,
                        wspace=0.08, hspace=0.12)


N_MARKERS = "osD^vP*X"  # the members figure: one marker per N (sizes keep their colours)


def members_figure(points: pd.DataFrame, out_dir: Path) -> Path:
    """EU(m)/EU_∞ against x = (m-1)/m, one panel per (split, method), sizes as colours and N as markers:
    seeds as dots, the mean over seeds joined by a line; the identity is what m i.i.d. draws give."""
    splits = sorted(points["split"].dropna().unique(), key=lambda s: (s != "test", s))
    methods = sorted(points["method"].unique())
    colours = size_colours(points)
    ns = sorted(int(n) for n in points["n"].unique())
    markers = {n: N_MARKERS[i % len(N_MARKERS)] for i, n in enumerate(ns)}
    fig, axes = plt.subplots(len(splits), len(methods), figsize=(2.3 * len(methods) + 1.8, 2.0 * len(splits) + 1.0),
                             squeeze=False, sharex=True, sharey=True)
    for i, split in enumerate(splits):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            _members_panel(ax, points[(points["split"] == split) & (points["method"] == method)], colours, markers)
            if i == 0:
                ax.set_title(method, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{split}\nEU(m) / EU_∞", fontsize=8)
            if i == len(splits) - 1:
                ax.set_xlabel("(m-1)/m", fontsize=7)
            ax.tick_params(labelsize=6)
    handles = _size_handles(colours) + [Line2D([], [], ls="none", label="N")]
    handles += [Line2D([], [], ls="none", marker=markers[n], color="0.35", ms=3, label=f"{n:,}") for n in ns]
    handles += [Line2D([], [], ls="none", marker=".", color="0.35", label="seeds"),
                Line2D([], [], color="0.35", ls="--", lw=1, label="identity: i.i.d. draws")]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("sub-ensembles: EU(m) / EU_∞ against (m-1)/m", fontsize=9)
    _leave_room_for_titles(fig)
    path = out_dir / "members_eu.png"
    fig.savefig(path, dpi=90, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return path


def _members_panel(ax, points: pd.DataFrame, colours, markers) -> None:
    ax.plot([0, 1], [0, 1], "--", color="0.2", lw=1)
    ax.set(xlim=(0, 1.02), ylim=(0, max(1.25, float(points["scaled"].max() * 1.05) if len(points) else 1.25)))
    for (size, n), group in points.groupby([points["size"].fillna(-1), "n"]):
        colour = colours[None if size == -1 else int(size)]
        ax.plot(group["x"], group["scaled"], ls="none", marker=".", ms=2.5, color=colour, alpha=0.4)
        means = group.groupby("x")["scaled"].mean()
        ax.plot(means.index, means.to_numpy(), "-", marker=markers[int(n)], ms=3, lw=0.8, color=colour)


def _size_handles(colours) -> list:
    handles = [Line2D([], [], ls="none", label="model size")]
    return handles + ([Line2D([], [], color=c, lw=2, label="no model" if s is None else f"{s:,}")
                       for s, c in colours.items() if s is not None]
                      or [Line2D([], [], color="0.3", lw=2, label="no model")])


class _PlainLog(LogFormatter):
    """Log-axis tick labels as plain numbers (0.003, 250, 4k, 1.5M): easier to read than 10^x."""

    def __call__(self, x, pos=None):
        if not super().__call__(x, pos):
            return ""
        for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= limit:
                return f"{x / limit:g}{suffix}"
        return f"{x:g}"
