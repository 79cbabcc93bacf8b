"""The fidelity section of the report: each method's epistemic uncertainty against the exact
posterior of the same model, on the linear-Gaussian task (experiments/fidelity.py).

`ratios(rows)` takes the store's final rows (raysweep.store.load(...), as a pyarrow Table or a pandas
DataFrame); `section(table, out_dir)` takes its result, writes `fidelity.png` into out_dir and returns
the section's markdown lines; `summary_notice(table)` the summary's line.
Torch-free, like the rest of the report.

Per method, N and split the ratio is mean over seeds of EU_method / EU_exact (the exact cell of the
same N and seed). Plug-in EU from S draws is biased by about (S-1)/S (the population variance over S
draws), so the table also gives the debiased ratio to the method's own reference: the exact
posterior, or for a diagonal Gaussian (vi, ivon) the best diagonal Gaussian, `exact_meanfield`
(methods/exact_meanfield.py), so that what is left is the method's optimisation or sampling error.
A method is called off its target where, at some N and split, that debiased ratio (mean over seeds)
is more than TOLERANCE from 1 and its 95% Student-t interval over seeds excludes 1 (with one seed,
the deviation alone decides). What each ratio should be:
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

# Methods whose regression predictive carries the closed-form mean and variance (two sigma points),
# whatever their S: no plug-in bias to remove.
CLOSED_FORM = ("laplace", "exact_meanfield")

# A chain's S samples are correlated: the plug-in variance over them is low by the variance of their
# mean, σ²/ESS rather than σ²/S, so after the (S-1)/S debias the ratio sits a little below 1.
CORRELATED_SAMPLES = ("1 after the (S-1)/S bias, a little below with correlated samples (the plug-in variance "
                      "loses σ²/ESS, not σ²/S), and more spread between seeds")

# What each method's EU converges to on the linear-Gaussian model, and why.
TARGETS = {
    "laplace": "1: with an identity feature map the Laplace posterior is the exact one",
    "exact_meanfield": "≤ 1: the best diagonal Gaussian (variances 1/Λ_ii) drops the posterior's correlations; "
                       "by little on this task's isotropic inputs, where Λ is near-diagonal",
    "vi": "1 against exact_meanfield: SVI's mean-field guide converges to the best diagonal Gaussian",
    "vi (lowrank)": "between exact_meanfield and 1: diagonal plus rank-r covariance (1 once r ≥ d)",
    "ivon": "1 against exact_meanfield like vi, once its Hessian estimate has forgotten hess_init "
            "(beta2 = 0: chosen per cell for that; at 0.999 and 1,000 steps hess_init keeps 37%)",
    "ensemble (anchored)": "1 after the (S-1)/S bias: randomize-then-optimize draws exact posterior samples",
    "ensemble": ("none (→ 0 at convergence: every member reaches the same least-squares fit); what is measured is "
                 "constant-lr Adam's jitter about that fit, wider than the posterior at large N"),
    "sghmc": CORRELATED_SAMPLES,
    "csgld": CORRELATED_SAMPLES,
    "swag": "none: its covariance is that of SGD's iterates, set by the learning rate and batch size, "
            "not by the posterior",
    "dropout": "none: input dropout's spread is set by the rate, not by the posterior",
}

# The cells each method's debiased EU should equal (methods with a target of 1 above).
REFERENCE = {"laplace": "exact", "ensemble (anchored)": "exact", "sghmc": "exact", "csgld": "exact",
             "vi": "exact_meanfield", "ivon": "exact_meanfield"}
CONJUGATE_MODEL = "linear"  # models/linear.py: the model whose exact posterior methods/exact.py computes
TOLERANCE = 0.10  # off target beyond ±10 %, where the seeds' 95% interval excludes 1


def variant(row) -> str:
    """The method with its variant (the anchored ensemble, vi's low-rank guide): variants can sit in
    one store (they differ in cell id) and have different targets (TARGETS, REFERENCE)."""
    options = json.loads(row["config"]).get("method_options", {}) if isinstance(row.get("config"), str) else {}
    if row["method"] == "ensemble" and options.get("prior") == "anchored":
        return "ensemble (anchored)"
    if row["method"] == "vi" and options.get("guide", "meanfield") != "meanfield":
        return f"vi ({options['guide']})"
    return row["method"]


def label(row) -> str:
    """The variant and, on a model with a size other than the conjugate one (experiments/regression.py's
    MLPs), that size: each has its own ratios, never pooled as seeds."""
    model = row.get("model")
    if isinstance(model, str) and model != CONJUGATE_MODEL and pd.notna(row.get("size")):
        return f"{variant(row)}, {row.get('size_knob') or 'size'} {int(row['size'])}"
    return variant(row)


def ratios(rows) -> pd.DataFrame:
    """One row per (label, n, split): S, seeds, mean and min/max over seeds of EU / exact EU, and where
    the method has a reference (REFERENCE), the debiased ratio to it: mean, min and max over seeds."""
    table = rows.to_pandas() if hasattr(rows, "to_pandas") else pd.DataFrame(rows)
    table = table[table["status"] == "ok"].copy()
    if table.empty or "exact" not in set(table["method"]):
        return pd.DataFrame()
    table["variant"], table["label"] = table.apply(variant, axis=1), table.apply(label, axis=1)
    sized = table["label"] != table["variant"]
    table["size_order"] = pd.to_numeric(table["size"], errors="coerce").where(sized, 0) if "size" in table else 0
    key = ["n", "seed", "split"]
    references = {name: table[table["method"] == name].set_index(key)["epistemic"]
                  for name in ("exact", "exact_meanfield")}
    approx = table[table["method"] != "exact"].join(references["exact"].rename("exact_eu"), on=key, how="inner")
    approx["ratio"] = approx["epistemic"] / approx["exact_eu"]
    s = approx["samples"].astype(float)
    approx["bias"] = ((s - 1) / s).where(s > 1).where(~approx["variant"].isin(CLOSED_FORM), 1.0)
    approx["to_reference"] = float("nan")
    # Judged only on the conjugate model itself: on another model (experiments/regression.py's MLPs)
    # the ratio mixes the method's error with the model's mismatch, and has no target.
    conjugate = approx["model"].isna() | (approx["model"] == CONJUGATE_MODEL) if "model" in approx else True
    for name, reference in references.items():
        mine = (approx["variant"].map(REFERENCE) == name) & conjugate
        eu = approx.loc[mine].join(reference.rename("reference_eu"), on=key)["reference_eu"]
        approx.loc[mine, "to_reference"] = approx.loc[mine, "epistemic"] / (approx.loc[mine, "bias"] * eu)
    grouped = approx.groupby(["label", "n", "split"])
    out = grouped.agg(variant=("variant", "first"), size_order=("size_order", "first"),
                      samples=("samples", "max"), seeds=("seed", "nunique"),
                      ratio=("ratio", "mean"),
                      ratio_min=("ratio", "min"), ratio_max=("ratio", "max"), bias=("bias", "mean"),
                      to_reference=("to_reference", "mean"), reference_min=("to_reference", "min"),
                      reference_max=("to_reference", "max"), reference_sd=("to_reference", "std"),
                      judged_seeds=("to_reference", "count")).reset_index()
    out["ratio_debiased"] = out["ratio"] / out["bias"]
    out["off_target"] = _off_target(out)
    return out.drop(columns=["bias", "reference_sd", "judged_seeds"])


def _off_target(out: pd.DataFrame) -> pd.Series:
    """More than TOLERANCE from 1, and 1 outside the 95% t-interval of the mean over seeds."""
    seeds = out["judged_seeds"]
    half_width = stats.t.ppf(0.975, (seeds - 1).clip(lower=1)) * out["reference_sd"] / np.sqrt(seeds)
    half_width = half_width.where(seeds > 1, 0.0)
    deviation = (out["to_reference"] - 1).abs()
    return (deviation > TOLERANCE) & (deviation > half_width)


def _cell(row) -> str:
    return f"{row.ratio:.3g} [{row.ratio_min:.3g}, {row.ratio_max:.3g}]"


def section(table: pd.DataFrame, out_dir: str | Path) -> list[str]:
    """Markdown lines of the fidelity section of a `ratios` table; writes out_dir/fidelity.png."""
    if table.empty:
        return ["## Fidelity against the exact posterior", "", "No exact cells to compare with.", ""]
    splits = sorted(table["split"].unique(), key=lambda s: (s != "test", s))
    lines = ["## Fidelity against the exact posterior", "",
             "EU of each method / EU of the exact posterior of the same model (same N, seed and split): "
             "mean over seeds [min, max]; 'debiased' divides the mean by (S-1)/S, the plug-in bias of S draws "
             "(exact, exact_meanfield and Laplace predict with closed-form moments, so S does not bias them). "
             "'to its reference' is the debiased EU over that of the cell the method should match: the exact "
             "posterior, or for a diagonal Gaussian (vi, ivon) the best diagonal Gaussian (exact_meanfield); "
             "a method whose posterior has no target, or that runs on another model than the linear one (where "
             "the ratio mixes its error with the model's mismatch), has none.", ""]
    ns = sorted(table["n"].unique())
    for split in splits:
        lines += [f"### split: {split}", "",
                  "| method | S | seeds | " + " | ".join(f"N={n}" for n in ns)
                  + " | debiased (all N) | to its reference (all N) | target |",
                  "|---|---|---|" + "---|" * len(ns) + "---|---|---|"]
        part = table[table["split"] == split].sort_values(["variant", "size_order"])
        for name, group in part.groupby("label", sort=False):
            by_n = {r.n: r for r in group.itertuples()}
            cells = " | ".join(_cell(by_n[n]) if n in by_n else "" for n in ns)
            samples = int(group["samples"].max()) if pd.notna(group["samples"].max()) else ""
            lines.append(f"| {name} | {samples} | {int(group['seeds'].min())} | {cells} | "
                         f"{_by_n(by_n, ns, 'ratio_debiased')} | {_by_n(by_n, ns, 'to_reference')} | "
                         f"{_target(group)} |")
        lines.append("")
    lines += _verdict(table)
    lines += [f"![fidelity]({_figure(table, splits, Path(out_dir)).name})", ""]
    return lines


def _target(group: pd.DataFrame) -> str:
    name, kind = group["label"].iloc[0], group["variant"].iloc[0]
    return TARGETS.get(kind, "") if name == kind else "none on this model: the ratio mixes the method's error " \
        "with the model's mismatch to the linear one"


def _by_n(by_n: dict, ns: list, column: str) -> str:
    values = [getattr(by_n[n], column) if n in by_n else float("nan") for n in ns]
    return ", ".join(f"{v:.3g}" if pd.notna(v) else "" for v in values) if any(map(pd.notna, values)) else "—"


def _verdict(table: pd.DataFrame) -> list[str]:
    """Which methods with a reference meet it, and where the others miss it (the rule: module docstring)."""
    judged = table[table["to_reference"].notna()]
    if judged.empty:
        return []
    off = judged[judged["off_target"]]
    on = sorted(set(judged["label"]) - set(off["label"]))
    lines = [f"Methods within ±{TOLERANCE:.0%} of their reference at every N and split, or not distinguishable "
             f"from it over the seeds: {', '.join(on) if on else 'none'}."]
    if not off.empty:
        lines += ["", f"**Off target** (more than {TOLERANCE:.0%} from their reference, 1 outside the seeds' 95% "
                  "interval): "
                  "their EU is not yet that of the posterior they approximate (training or sampling stopped short, "
                  "or a bias of the method); read their laws with that in mind:", ""]
        for name, group in off.groupby("label"):
            where = "; ".join(f"N={r.n} {r.split}: {r.to_reference:.3g} [{r.reference_min:.3g}, {r.reference_max:.3g}]"
                              for r in group.sort_values(["split", "n"]).itertuples())
            lines.append(f"- {name} (reference {REFERENCE[group['variant'].iloc[0]]}): {where}")
    return lines + [""]


def summary_notice(table: pd.DataFrame) -> list[str]:
    """One line for the report's summary naming the methods off their target (a `ratios` table), or nothing."""
    off = table[table["off_target"]] if not table.empty else table
    if off.empty:
        return []
    where = "; ".join(f"{name} at N = {', '.join(str(n) for n in sorted(group['n'].unique()))}"
                      for name, group in off.groupby("label"))
    return [f"Off their target on the exact posterior (fidelity section): {where}. Their EU there is not yet "
            "that of the posterior they approximate, and their laws carry that error.", ""]


def _figure(table: pd.DataFrame, splits: list[str], out_dir: Path) -> Path:
    """Top row: EU / exact EU of every method (log scale). Bottom row: the methods with a reference,
    debiased EU / their reference on a linear scale with the ±TOLERANCE band, where a miss shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    judged = table[table["to_reference"].notna()]
    rows = 2 if len(judged) else 1
    fig, axes = plt.subplots(rows, len(splits), figsize=(5.5 * len(splits), 3.75 * rows), squeeze=False,
                             sharex=True)
    colours = {name: f"C{i}" for i, name in enumerate(sorted(table["label"].unique()))}
    for column, split in enumerate(splits):
        _ratio_lines(axes[0][column], table[table["split"] == split], "ratio", "ratio_min", "ratio_max", colours)
        axes[0][column].set(yscale="log", title=f"EU / exact EU ({split})")
        if rows == 2:
            _ratio_lines(axes[1][column], judged[judged["split"] == split], "to_reference", "reference_min",
                         "reference_max", colours)
            axes[1][column].axhspan(1 - TOLERANCE, 1 + TOLERANCE, color="0.9", zorder=0)
            axes[1][column].set(title=f"debiased EU / its reference ({split})")
        axes[-1][column].set_xlabel("N")
    axes[0][0].set_ylabel("ratio (mean over seeds, min-max)")
    if rows == 2:
        axes[1][0].set_ylabel(f"ratio (band: ±{TOLERANCE:.0%})")
    for row in axes:
        row[-1].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "fidelity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ratio_lines(ax, part: pd.DataFrame, mean: str, low: str, high: str, colours: dict) -> None:
    for name, group in part.groupby("label"):
        group = group.sort_values("n")
        ax.errorbar(group["n"], group[mean], yerr=[group[mean] - group[low], group[high] - group[mean]],
                    marker="o", capsize=3, label=name, color=colours[name])
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xscale("log")


__all__ = ["REFERENCE", "TARGETS", "TOLERANCE", "ratios", "section", "summary_notice"]
