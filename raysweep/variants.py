"""Names for configurations that share a method: a store may hold several (`launch --merge`, or the
anchored and plain ensembles side by side), and cells of different configurations must never be
pooled as if they were seeds. A configuration is a row's `variant` (store.variant: the cell's
config without N, size, seed and method); its label is the method plus the settings that set it
apart from the method's other variants, e.g. "ensemble (prior=anchored)". No torch: the report
and the fidelity section use it."""

from __future__ import annotations

import json

import pandas as pd

IGNORED = {"cell_id", "experiment", "n", "seed", "size", "method"}


def labels(table: pd.DataFrame) -> pd.Series:
    """Per row: the method, or for a method with several variants, the method and what differs."""
    out = table["method"].astype(str).copy()
    if "variant" not in table or "config" not in table:
        return out
    for method, rows in table.groupby("method"):
        variants = rows.dropna(subset=["variant"]).drop_duplicates("variant")
        if len(variants) < 2:
            continue
        settings = {v: _flat(json.loads(c)) for v, c in zip(variants["variant"], variants["config"])}
        differing = sorted({key for s in settings.values() for key in s
                            if len({str(other.get(key)) for other in settings.values()}) > 1})
        for variant, flat in settings.items():
            named = ", ".join(f"{_short(key)}={flat.get(key)}" for key in differing)
            out[(table["method"] == method) & (table["variant"] == variant)] = f"{method} ({named})"
    return out


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if not prefix and key in IGNORED:
            continue
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(key: str) -> str:
    """method_options.prior -> prior: the method's own options need no prefix."""
    return key.removeprefix("method_options.")
