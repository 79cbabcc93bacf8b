"""Fits and the markdown report, read only from the store.

    report.write(results_dir, out_dir)  ->  out_dir/report.md, fits.csv, one PNG per eval split
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from raysweep import scaling, store

UNCERTAINTIES = ("total", "aleatoric", "epistemic")
FIT_METRICS = UNCERTAINTIES + ("nll", "error_rate")
CURVE = ["task", "method", "model", "size", "split"]


def fit_curves(results: pd.DataFrame) -> pd.DataFrame:
    """One power law against N per (task, method, model size, split, metric), over every seed."""
    rows = []
    for key, group in results.groupby(CURVE, dropna=False):
        for metric in FIT_METRICS:
            if metric not in group or group[metric].isna().all():
                continue
            law = scaling.fit(group["n"], group[metric], "power")
            rows.append(dict(zip(CURVE, key)) | {
                "metric": metric, "law": law.law, "ok": law.ok, "points": law.n_points,
                "dropped": law.n_dropped, "a": law.values.get("a"), "b": law.values.get("b"),
                "b_stderr": law.stderr.get("b"), "message": "" if law.ok else law.message,
            })
    return pd.DataFrame(rows)


def write(results_dir: str | Path, out_dir: str | Path, title: str = "raysweep report") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = store.load(results_dir).to_pandas()
    ok = table[table["status"] == "ok"]
    failed = table[table["status"] == "failed"]
    fits = fit_curves(ok) if len(ok) else pd.DataFrame()
    fits.to_csv(out_dir / "fits.csv", index=False)
    plots = [plot_split(ok, fits, split, out_dir) for split in sorted(ok["split"].dropna().unique())]
    lines = [f"# {title}", "",
             f"{ok['cell_id'].nunique()} cells finished, {failed['cell_id'].nunique()} failed.", ""]
    lines += _fits_markdown(fits)
    lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if len(failed):
        lines += ["## Failed cells", "", "| cell | method | N | seed | error |", "|---|---|---|---|---|"]
        lines += [f"| {r.cell_id} | {r.method} | {r.n} | {r.seed} | {str(r.error).splitlines()[-1] if r.error else ''} |"
                  for r in failed.itertuples()]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fits_markdown(fits: pd.DataFrame) -> list[str]:
    if fits.empty:
        return ["No curve has enough points to fit yet.", ""]
    lines = ["## Power laws y = a · N^(-b)", "",
             "| task | method | size | split | metric | b ± s.e. | a | points |", "|---|---|---|---|---|---|---|---|"]
    for r in fits.itertuples():
        size = "" if pd.isna(r.size) else int(r.size)
        if r.ok:
            err = "unavailable" if r.b_stderr is None or pd.isna(r.b_stderr) else f"{r.b_stderr:.3f}"
            lines.append(f"| {r.task} | {r.method} | {size} | {r.split} | {r.metric} | {r.b:.3f} ± {err} | {r.a:.3g} | {r.points} |")
        else:
            lines.append(f"| {r.task} | {r.method} | {size} | {r.split} | {r.metric} | unfit: {r.message} | | {r.points} |")
    return lines + [""]


def plot_split(ok: pd.DataFrame, fits: pd.DataFrame, split: str, out_dir: Path) -> Path:
    """Log-log TU / AU / EU against N, one line per (method, size): seed mean, min-max bars, fitted law."""
    data = ok[ok["split"] == split]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, metric in zip(axes, UNCERTAINTIES):
        for (method, size), group in data.groupby(["method", "size"], dropna=False):
            stats = group.groupby("n")[metric].agg(["mean", "min", "max"]).reset_index()
            stats = stats[stats["mean"] > 0]
            if stats.empty:
                continue
            label = method if pd.isna(size) else f"{method} {group['size_knob'].iloc[0]}={int(size)}"
            bars = np.vstack([stats["mean"] - stats["min"], stats["max"] - stats["mean"]]).clip(min=0)
            line = ax.errorbar(stats["n"], stats["mean"], yerr=bars, fmt="o", ms=4, capsize=2, label=label)
            law = _law_for(fits, method, size, split, metric)
            if law is not None:
                grid = np.geomspace(stats["n"].min(), stats["n"].max(), 50)
                ax.plot(grid, scaling.power_law(grid, law.a, law.b), "--", color=line[0].get_color(), lw=1)
        ax.set(xscale="log", yscale="log", xlabel="training examples N", title=f"{metric} (nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"uncertainty vs N on '{split}' (dashed: fitted power law)")
    fig.tight_layout()
    path = out_dir / f"{split}_uncertainty_vs_n.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _law_for(fits, method, size, split, metric):
    if fits.empty:
        return None
    match = fits[(fits["method"] == method) & (fits["split"] == split) & (fits["metric"] == metric) & fits["ok"]
                 & ((fits["size"] == size) | (fits["size"].isna() & pd.isna(size)))]
    return None if match.empty else match.iloc[0]
