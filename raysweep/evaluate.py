"""Score a posterior on every evaluation set: uncertainty decomposition, fit and OOD detection.

Evaluation streams each set in batches and keeps only per-example (per-token for language models)
scalars: never (S, examples, classes) for the whole set, and never the whole predictive.
"""

from __future__ import annotations

import math

import torch

from raysweep import uncertainty as U
from raysweep.tasks.data import IGNORE_INDEX, REGRESSION, TaskData

BATCH = 256  # examples per batch at most
PREDICTION_BUDGET = 2**25  # elements of one batch's predictions: 256 MiB once made float64


# Temperature scaling fits on at most this many scored validation predictions (each a row of C
# log-probabilities): a language model's validation split would otherwise be held whole.
TEMPERATURE_BUDGET = 2**24


def evaluate(posterior, data: TaskData, ece_bins: int = 15) -> dict[str, dict[str, float]]:
    """Metrics per evaluation split ("test" first). OOD splits also get AUROC against "test".
    Classification with a validation split (the converged budget's) also gets NLL and ECE after
    temperature scaling fitted on that split (`nll_ts`, `ece_ts`, `temperature`)."""
    temperature = fit_temperature(posterior, data)
    per_split = {name: _scores(posterior, x, y, data.kind, temperature) for name, (x, y) in data.eval_sets.items()}
    metrics = {}
    for name, scores in per_split.items():
        row = _spread(scores)
        if "nll" in scores:
            row |= _fit_quality(scores, ece_bins)
        if "nll_ts" in scores:
            row |= {"temperature": temperature, "nll_ts": scores["nll_ts"].mean().item(),
                    "ece_ts": U.calibration_error(scores["confidence_ts"], scores["correct"], ece_bins)}
        if name != "test":
            test = per_split["test"]
            for score in ("epistemic", "total"):
                row[f"auroc_{score}"] = U.ood_auroc(test[score], scores[score])
                row[f"fpr95_{score}"] = U.fpr_at_tpr(test[score], scores[score], 0.95)
        metrics[name] = row
    return metrics


class FirstSamples:
    """The sub-ensemble of a posterior's first m members or samples: for one trained pool, a larger
    m contains every smaller one, so EU and NLL against m are nested (Lobacheva et al., 2020)."""

    def __init__(self, posterior, m: int):
        self.posterior, self.m = posterior, m

    def predict(self, x: torch.Tensor):
        prediction = self.posterior.predict(x)
        if isinstance(prediction, tuple):  # regression: (means, variances), each (S, B)
            return tuple(part[: self.m] for part in prediction)
        return prediction[: self.m]  # (S, B, C) or (S, B, T, V)


def fit_temperature(posterior, data: TaskData) -> float | None:
    """T minimising the validation NLL of the tempered predictive p̄^(1/T) / Σ p̄^(1/T) (Guo et al.,
    2017, applied to the posterior predictive p̄ rather than to one network's logits); None without
    a labelled validation split or for regression. Accuracy does not change: the argmax is kept."""
    validation = data.extras.get("validation")
    if data.kind == REGRESSION or validation is None:
        return None
    x, y = validation
    log_p, labels, rows = [], [], 0
    for prediction, batch_labels in _batches(posterior, x, y):
        probs = prediction.double().flatten(1, -2)  # (S, B·T, C)
        batch_labels = batch_labels.reshape(-1).to(probs.device)
        scored = batch_labels != IGNORE_INDEX
        log_p.append(probs[:, scored].mean(0).clamp_min(1e-300).log().cpu())
        labels.append(batch_labels[scored].cpu())
        rows += int(scored.sum()) * probs.shape[-1]
        if rows >= TEMPERATURE_BUDGET:
            break
    log_p, labels = torch.cat(log_p), torch.cat(labels)
    if len(labels) == 0:
        return None
    from scipy.optimize import minimize_scalar  # here: scipy.optimize costs every worker a second to import

    def nll(log_t: float) -> float:
        return torch.nn.functional.cross_entropy(log_p / math.exp(log_t), labels).item()

    return math.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x)


def _batches(posterior, x: torch.Tensor, y: torch.Tensor | None):
    """(predictions, labels) of x in batches: the first of one example, to measure a prediction's
    size; later ones hold at most PREDICTION_BUDGET elements of (S, B, …, C), so a large vocabulary
    and many members shrink the batch, not the machine."""
    start, size = 0, 1
    while start < len(x):
        labels = None if y is None else y[start:start + size]
        prediction = posterior.predict(x[start:start + size])
        yield prediction, labels
        examples = min(size, len(x) - start)  # the last batch may be short
        parts = prediction if isinstance(prediction, tuple) else [prediction]
        per_example = sum(p.numel() for p in parts) // examples
        start += size
        size = max(1, min(BATCH, PREDICTION_BUDGET // per_example))


def _scores(posterior, x: torch.Tensor, y: torch.Tensor | None, kind: str,
            temperature: float | None = None) -> dict[str, torch.Tensor]:
    """Per-example scores, flattened over tokens when the predictions are per token (see _batches)."""
    batches = []
    for prediction, labels in _batches(posterior, x, y):
        if kind == REGRESSION:
            batches.append(_regression_scores(*prediction, labels))
        else:
            batches.append(_classification_scores(prediction, labels, temperature))
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _classification_scores(probs: torch.Tensor, labels, temperature: float | None = None) -> dict[str, torch.Tensor]:
    probs = probs.double().flatten(1, -2)  # (S, B, C), or (S, B·T, V) for language models
    if labels is not None:
        labels = labels.reshape(-1).to(probs.device)
        scored = labels != IGNORE_INDEX  # e.g. the operand tokens of an equation
        probs, labels = probs[:, scored], labels[scored]
    parts = U.decompose(probs)
    if labels is not None:
        predictive = probs.mean(0)  # (B, C)
        confidence, predicted = predictive.max(-1)
        onehot = torch.nn.functional.one_hot(labels, predictive.shape[-1]).to(predictive.dtype)
        parts |= {
            "nll": U.nll(predictive, labels),
            "correct": (predicted == labels).double(),
            "confidence": confidence,
            "brier": ((predictive - onehot) ** 2).sum(-1),
        }
        if temperature is not None:  # the tempered predictive: log p̄ / T, renormalised
            tempered = (predictive.clamp_min(1e-300).log() / temperature).log_softmax(-1)  # (B, C)
            parts |= {"nll_ts": -tempered.gather(-1, labels[:, None])[:, 0],
                      "confidence_ts": tempered.max(-1).values.exp()}
    return {key: value.cpu() for key, value in parts.items()}


def _regression_scores(means, variances, labels) -> dict[str, torch.Tensor]:
    means, variances = means.double(), variances.double()  # (S, B) each
    parts = U.decompose_gaussian(means, variances)
    if labels is not None:
        labels = labels.double().to(means.device)
        predictive = means.mean(0)
        parts |= {"nll": U.gaussian_nll(predictive, parts["total_var"], labels),
                  "squared_error": (predictive - labels) ** 2}
    return {key: value.cpu() for key, value in parts.items()}


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


def _fit_quality(scores: dict[str, torch.Tensor], ece_bins: int) -> dict[str, float]:
    if "squared_error" in scores:
        return {"nll": scores["nll"].mean().item(), "rmse": scores["squared_error"].mean().sqrt().item()}
    accuracy = scores["correct"].mean().item()
    return {
        "nll": scores["nll"].mean().item(),
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "ece": U.calibration_error(scores["confidence"], scores["correct"], ece_bins),
        "brier": scores["brier"].mean().item(),
        # selective prediction: reject the least confident first (top-class confidence of p̄)
        "aurc": U.aurc(scores["confidence"], scores["correct"]),
        "augrc": U.augrc(scores["confidence"], scores["correct"]),
    }
