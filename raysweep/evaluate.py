"""Score a posterior on every evaluation set: uncertainty decomposition, fit and OOD detection.

Evaluation streams the set in batches; only per-example scores and the (B, C) predictive are kept.
"""

from __future__ import annotations

import torch

from raysweep import uncertainty as U
from raysweep.tasks.data import CLASSIFICATION, TaskData

BATCH = 1024


def evaluate(posterior, data: TaskData, ece_bins: int = 15) -> dict[str, dict[str, float]]:
    """Metrics per evaluation split ("test" first). OOD splits also get AUROC against "test"."""
    per_split = {name: _scores(posterior, x, data.kind) for name, (x, _) in data.eval_sets.items()}
    metrics = {}
    for name, (_, labels) in data.eval_sets.items():
        scores = per_split[name]
        row = _spread(scores)
        if labels is not None:
            row |= _fit_quality(scores, labels, data.kind, ece_bins)
        if name != "test":
            test = per_split["test"]
            row["auroc_epistemic"] = U.ood_auroc(test["epistemic"], scores["epistemic"])
            row["auroc_total"] = U.ood_auroc(test["total"], scores["total"])
        metrics[name] = row
    return metrics


def _scores(posterior, x: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    batches = []
    for start in range(0, len(x), BATCH):
        prediction = posterior.predict(x[start:start + BATCH])
        if kind == CLASSIFICATION:
            probs = prediction.double()  # (S, B, C)
            parts = U.decompose(probs) | {"predictive": probs.mean(0)}
        else:
            means, variances = (t.double() for t in prediction)  # (S, B) each
            parts = U.decompose_gaussian(means, variances) | {"predictive": means.mean(0)}
        batches.append(parts)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _spread(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each per-example uncertainty, and the spread (std) of the entropy-form ones."""
    row = {}
    for key in ("total", "aleatoric", "epistemic"):
        row[key] = scores[key].mean().item()
        row[f"{key}_std"] = scores[key].std().item() if len(scores[key]) > 1 else 0.0
    for key in ("total_var", "aleatoric_var", "epistemic_var"):
        if key in scores:
            row[key] = scores[key].mean().item()
    return row


def _fit_quality(scores, labels: torch.Tensor, kind: str, ece_bins: int) -> dict[str, float]:
    predictive = scores["predictive"]
    if kind == CLASSIFICATION:
        accuracy = U.accuracy(predictive, labels)
        return {
            "nll": U.nll(predictive, labels).mean().item(),
            "accuracy": accuracy,
            "error_rate": 1.0 - accuracy,
            "ece": U.expected_calibration_error(predictive, labels, ece_bins),
            "brier": U.brier(predictive, labels),
        }
    labels = labels.double()
    return {
        "nll": U.gaussian_nll(predictive, scores["total_var"], labels).mean().item(),
        "rmse": ((predictive - labels) ** 2).mean().sqrt().item(),
    }
