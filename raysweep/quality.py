"""The quality gate on a cell's predictions: a cell whose predictions are degenerate is stored with
status "degenerate" and the reason (in `error`), kept out of every fit (fits use status "ok") and
not re-run (the same settings would give the same cell; launch re-runs only failed and missing ones).

Degenerate means no better than a predictor that ignores the inputs, or numbers that cannot be
trusted at all:
  - a metric that is NaN or infinite;
  - regression: test RMSE above that of the trivial predictor (the training targets' mean), or the
    spread of the sample means (epistemic_var) beyond SPREAD_LIMIT times the test targets' variance
    (samples that have run off);
  - classification: test accuracy no better than always predicting the test set's most common class.
"""

from __future__ import annotations

import math

import torch

from raysweep.tasks.data import IGNORE_INDEX, REGRESSION, TaskData

SPREAD_LIMIT = 100.0  # epistemic_var above this many times Var(y_test): the samples exploded


def baselines(data: TaskData) -> dict[str, float]:
    """What a predictor that ignores the inputs achieves on the test split."""
    _, labels = data.eval_sets["test"]
    if labels is None:
        return {}
    if data.kind == REGRESSION:
        y = labels.double()
        trivial = (y - data.train_y.double().mean()).pow(2).mean().sqrt().item()
        return {"trivial_rmse": trivial, "target_var": y.var().item() if len(y) > 1 else 0.0}
    scored = labels.reshape(-1)
    scored = scored[scored != IGNORE_INDEX]
    if len(scored) == 0:
        return {}
    return {"chance_accuracy": torch.bincount(scored).max().item() / len(scored)}


def degenerate(metrics: dict[str, dict[str, float]], baseline: dict[str, float]) -> str | None:
    """Why the cell's predictions are degenerate, or None. metrics: {split: {metric: value}}."""
    for split, row in metrics.items():
        bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            return f"non-finite metrics on split {split!r}: {', '.join(f'{k}={row[k]}' for k in bad)}"
    test = metrics.get("test", {})
    if "rmse" in test and "trivial_rmse" in baseline and test["rmse"] > baseline["trivial_rmse"]:
        return (f"test RMSE {test['rmse']:.4g} is above the {baseline['trivial_rmse']:.4g} of predicting the "
                f"training mean")
    if "epistemic_var" in test and baseline.get("target_var", 0) > 0 \
            and test["epistemic_var"] > SPREAD_LIMIT * baseline["target_var"]:
        return (f"the sample means exploded: their variance {test['epistemic_var']:.4g} is over "
                f"{SPREAD_LIMIT:g}x the test targets' variance {baseline['target_var']:.4g}")
    if "accuracy" in test and "chance_accuracy" in baseline and test["accuracy"] <= baseline["chance_accuracy"]:
        return (f"test accuracy {test['accuracy']:.4g} is at chance (always predicting the most common class "
                f"scores {baseline['chance_accuracy']:.4g})")
    return None
