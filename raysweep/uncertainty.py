"""Uncertainty decompositions and the scores reported per cell, all in nats.

Every function accepts torch tensors or numpy arrays and returns the same kind it was given.
Shapes use S = posterior samples / members, B = examples (any extra leading dims, such as tokens,
are allowed between S and C), C = classes.

    predictive  p̄(y|x) = mean_s p_s(y|x)
    total       TU = H[p̄]
    aleatoric   AU = mean_s H[p_s]
    epistemic   EU = TU - AU   (mutual information between y and θ; >= 0 up to rounding)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _to_torch(x):
    return (torch.from_numpy(np.asarray(x)), True) if not torch.is_tensor(x) else (x, False)


def _back(x: torch.Tensor, was_numpy: bool):
    return x.numpy() if was_numpy else x


def _on_cpu(x) -> bool:
    """Small per-example reductions (ECE, Brier) run in numpy on CPU: single-threaded numpy is as
    fast as torch on an idle machine and 3-5x faster than torch's 2-thread kernels on a loaded one
    (benchmarks/metrics.py, benchmarks/RESULTS.md). GPU tensors stay in torch."""
    return not torch.is_tensor(x) or x.device.type == "cpu"


def _np(x) -> np.ndarray:
    """A CPU tensor or array as numpy, zero-copy when possible (bf16/fp16 widened to float64)."""
    if torch.is_tensor(x):
        x = x.detach()
        return (x if x.dtype in (torch.float32, torch.float64, torch.bool) or not x.is_floating_point()
                else x.double()).numpy()
    return np.asarray(x)


# Work on at most this many probabilities at a time: the temporaries of p·log p then stay bounded
# (a language model's (S, tokens, 50257) stack would otherwise need a second copy of itself).
_CHUNK = 1 << 24


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-Σ_c p_c log p_c over the last dim, summed in float64 and returned in p's dtype.

    p·log(max(p, tiny)) equals xlogy(p, p) for every p >= tiny and gives exactly 0 at p = 0, but is
    about twice as fast on CPU as torch.special.xlogy; NaN still propagates.
    """
    log = p.clamp_min(torch.finfo(p.dtype).tiny)
    log.log_().mul_(p)
    return -log.sum(-1, dtype=torch.float64).to(p.dtype)


def entropy(probs):
    """H[p] = -Σ_c p_c log p_c over the last dim; 0·log 0 is taken as 0."""
    p, was_numpy = _to_torch(probs)
    if not p.dtype.is_floating_point:
        p = p.double()
    if p.dim() == 0 or p.numel() <= _CHUNK:
        return _back(_entropy(p), was_numpy)
    flat = p.reshape(-1, p.shape[-1])  # (rows, C)
    rows = max(1, _CHUNK // max(1, p.shape[-1]))
    out = torch.cat([_entropy(flat[start:start + rows]) for start in range(0, flat.shape[0], rows)])
    return _back(out.reshape(p.shape[:-1]), was_numpy)


def decompose(probs) -> dict:
    """Split predictive entropy of (S, ..., C) probabilities into total, aleatoric and epistemic.

    Returns per-example arrays of shape (...): keys "total", "aleatoric", "epistemic".
    S = 1 gives epistemic exactly 0.
    """
    p, was_numpy = _to_torch(probs)
    total = entropy(p.mean(0))
    aleatoric = entropy(p).mean(0)
    parts = {"total": total, "aleatoric": aleatoric, "epistemic": total - aleatoric}
    return {k: _back(v, was_numpy) for k, v in parts.items()}


def decompose_gaussian(means, variances) -> dict:
    """Decompose S Gaussian members N(μ_s, σ²_s) per example (shapes (S, B)).

    Variance form: aleatoric_var = mean σ²_s, epistemic_var = var_s μ_s (population variance),
    total_var = their sum. Entropy form (nats), taking the predictive as the moment-matched Gaussian,
    which is exact when the predictive is Gaussian (e.g. Bayesian linear regression):
    total = ½ log(2πe·total_var), aleatoric = mean_s ½ log(2πe·σ²_s), epistemic = total - aleatoric.
    With a shared σ² this gives epistemic = ½ log(1 + epistemic_var / σ²).
    """
    mu, was_numpy = _to_torch(means)
    var, _ = _to_torch(variances)
    aleatoric_var = var.mean(0)
    epistemic_var = mu.var(0, unbiased=False)
    total_var = aleatoric_var + epistemic_var
    log_2pie = math.log(2 * math.pi * math.e)
    total = 0.5 * (log_2pie + total_var.log())
    aleatoric = (0.5 * (log_2pie + var.log())).mean(0)
    parts = {
        "total": total,
        "aleatoric": aleatoric,
        "epistemic": total - aleatoric,
        "total_var": total_var,
        "aleatoric_var": aleatoric_var,
        "epistemic_var": epistemic_var,
    }
    return {k: _back(v, was_numpy) for k, v in parts.items()}


def nll(mean_probs, labels):
    """Per-example negative log-likelihood of the predictive p̄ (shape (B, C)) at integer labels."""
    p, was_numpy = _to_torch(mean_probs)
    y, _ = _to_torch(labels)
    picked = p.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    # A probability of exactly 0 at the true label would give inf; the smallest normal float keeps
    # the score finite (and very large) so one example cannot turn a whole mean into inf.
    return _back(-picked.clamp_min(torch.finfo(p.dtype).tiny).log(), was_numpy)


def gaussian_nll(mean, variance, targets):
    """Per-example -log N(y; mean, variance)."""
    mu, was_numpy = _to_torch(mean)
    var, _ = _to_torch(variance)
    y, _ = _to_torch(targets)
    return _back(0.5 * (math.log(2 * math.pi) + var.log() + (y - mu) ** 2 / var), was_numpy)


def accuracy(mean_probs, labels) -> float:
    p, _ = _to_torch(mean_probs)
    y, _ = _to_torch(labels)
    return (p.argmax(-1) == y.long()).double().mean().item()


def brier(mean_probs, labels) -> float:
    """Mean over examples of Σ_c (p̄_c - 1[y = c])²  (multiclass Brier score, range [0, 2])."""
    p, _ = _to_torch(mean_probs)
    y, _ = _to_torch(labels)
    # Σ_{c≠y} p̄_c² + (1 - p̄_y)² = Σ_c p̄_c² - p̄_y² + (1 - p̄_y)², without a (B, C) one-hot.
    if p.device.type == "cpu":  # see _on_cpu
        a = _np(p)
        squares = np.einsum("...c,...c->...", a, a, dtype=np.float64)  # (B,)
        picked = np.take_along_axis(a, y.long().numpy()[..., None], -1)[..., 0].astype(np.float64)  # (B,)
        return float((squares - picked * picked + (1 - picked) ** 2).mean())
    squares = (p * p).sum(-1, dtype=torch.float64)  # (B,)
    picked = p.gather(-1, y.long().unsqueeze(-1)).squeeze(-1).double()  # (B,)
    return (squares - picked * picked + (1 - picked) ** 2).mean().item()


def expected_calibration_error(mean_probs, labels, n_bins: int = 15) -> float:
    """ECE with n_bins equal-width bins on the top-class confidence of p̄ (shape (B, C))."""
    p, _ = _to_torch(mean_probs)
    y, _ = _to_torch(labels)
    if p.device.type == "cpu":  # see _on_cpu
        a = _np(p)
        return calibration_error(a.max(-1), a.argmax(-1) == y.long().numpy(), n_bins)
    confidence, predicted = p.max(-1)
    return calibration_error(confidence, (predicted == y.long()).to(p.dtype), n_bins)


def calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """ECE from per-example top-class confidence and 0/1 correctness (so evaluation can stream).

    Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 falls in the first bin.
    ECE = Σ_bins (|bin| / B) · |accuracy(bin) - mean confidence(bin)|.
    """
    if _on_cpu(confidence):
        confidence, correct = _np(confidence), _np(correct)
        bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        gap = np.bincount(bins, weights=confidence - correct.astype(confidence.dtype), minlength=n_bins)
        return float(np.abs(gap).sum() / confidence.size)
    confidence, _ = _to_torch(confidence)
    correct, _ = _to_torch(correct)
    bins = (confidence * n_bins).ceil_().sub_(1).clamp_(0, n_bins - 1).long()
    gap = torch.zeros(n_bins, dtype=confidence.dtype, device=confidence.device)
    gap.index_add_(0, bins, confidence.sub(correct.to(confidence.dtype)))  # per bin: Σ confidence - Σ correct
    return (gap.abs().sum() / confidence.numel()).item()


def ood_auroc(score_in, score_out) -> float:
    """AUROC of telling OOD from ID inputs, OOD being the positive class and higher score = more OOD.

    Computed as the Mann-Whitney statistic (ties count one half), which equals the area under the
    ROC curve exactly.
    """
    s_in = np.asarray(torch.as_tensor(score_in).double().cpu())
    s_out = np.asarray(torch.as_tensor(score_out).double().cpu())
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError(f"ood_auroc needs scores on both sides, got {s_in.size} ID and {s_out.size} OOD")
    from scipy.stats import rankdata  # here: scipy.stats costs every Ray worker ~0.4 s (1-2 s under load) to import

    ranks = rankdata(np.concatenate([s_in, s_out]))
    rank_sum_out = ranks[s_in.size:].sum()
    return float((rank_sum_out - s_out.size * (s_out.size + 1) / 2) / (s_in.size * s_out.size))


# ---------------------------------------------------------------------------------------------
# Selective prediction and OOD detection at a fixed recall. Written here (numpy, a few lines)
# rather than taken from torch-uncertainty, whose package import needs Lightning; the tests check
# these against its AURC, AUGRC and FPR95 metrics.

def selective_risks(confidence, correct) -> np.ndarray:
    """r(k/N) for k = 1..N: the error rate of the k most confident predictions (ties broken by
    position: a stable sort)."""
    order = np.argsort(-_np(confidence), kind="stable")
    errors = 1.0 - _np(correct).astype(np.float64)[order]
    return np.cumsum(errors) / np.arange(1, errors.size + 1)


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv, 2017), lower is better:
    the trapezoid integral of r(κ) over κ = k/N in [1/N, 1], divided by its length 1 − 1/N
    (torch-uncertainty 0.13's convention). NaN for fewer than 2 examples."""
    risks = selective_risks(confidence, correct)
    return _coverage_integral(risks)


def augrc(confidence, correct) -> float:
    """Area under the generalised risk-coverage curve (Traub et al., 2024): the integral of κ · r(κ),
    the joint probability of being accepted and wrong, normalised as in `aurc`. Lower is better."""
    risks = selective_risks(confidence, correct)
    return _coverage_integral(risks * np.arange(1, risks.size + 1) / risks.size)


def _coverage_integral(values: np.ndarray) -> float:
    n = values.size
    if n < 2:
        return float("nan")
    trapezoid = (values[:-1] + values[1:]).sum() / (2 * n)  # steps of 1/N between the N coverages
    return float(trapezoid / (1 - 1 / n))


def fpr_at_tpr(score_in, score_out, tpr: float = 0.95) -> float:
    """False-positive rate on ID inputs at the first score threshold that flags at least `tpr` of the
    OOD inputs (higher score = more OOD; thresholds only between groups of tied scores, so no
    unreachable operating point is claimed). FPR95 is the usual report. Lower is better."""
    s_in, s_out = _np(score_in).astype(np.float64).ravel(), _np(score_out).astype(np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError(f"fpr_at_tpr needs scores on both sides, got {s_in.size} ID and {s_out.size} OOD")
    scores = np.concatenate([s_in, s_out])
    is_out = np.concatenate([np.zeros(s_in.size, bool), np.ones(s_out.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_out = scores[order], is_out[order]
    ends = np.append(np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1)  # last index of each tie group
    true_pos = np.cumsum(is_out)[ends]
    false_pos = ends + 1 - true_pos
    first = np.flatnonzero(true_pos / s_out.size >= tpr)[0]
    return float(false_pos[first] / s_in.size)
