"""Metrics: raysweep.uncertainty against torchmetrics and plain numpy, on the same tensors.

    python benchmarks/metrics.py                     # both cases, 5 interleaved repeats
    python benchmarks/metrics.py --repeats 3 --lm-tokens 4096

Cases (float32 probabilities from a softmax of Gaussian logits, fixed seed):
    classification  (S, B, C) = (32, 100000, 10)
    language model  (S, T, V) = (4, 8192, 50257)  # GPT-2 vocabulary; 6.6 GB of probabilities

Compared, per case:
    decompose   raysweep U.decompose(probs)            vs numpy (torchmetrics has no entropy /
                                                          mutual-information decomposition)
    ECE         U.expected_calibration_error(p̄, y, 15) vs torchmetrics MulticlassCalibrationError
                                                          (n_bins=15, norm="l1") and numpy
    Brier       U.brier(p̄, y)                          vs numpy (torchmetrics has no multiclass Brier)
    AUROC       U.ood_auroc(EU_id, EU_ood)             vs torchmetrics BinaryAUROC (OOD = positive,
                                                          thresholds=None: exact) and numpy
p̄ = probs.mean(0) is computed once and shared. The OOD scores come from a second tensor with
flatter logits. Each repeat runs every implementation once, in a rotating order; the script prints
min/median/max seconds, the ratio of medians (other / raysweep: > 1 means raysweep is faster) and the
largest absolute difference of values (goal: <= 1e-6).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from scipy.special import xlogy
from torchmetrics.functional.classification import binary_auroc, multiclass_calibration_error

from raysweep import uncertainty as U

N_BINS = 15
CHUNK_ELEMENTS = 1 << 26  # numpy reference: at most this many elements per temporary


# ---------------------------------------------------------------------------------------------
# Straightforward numpy versions

def np_decompose(p: np.ndarray) -> dict:
    """TU = H[mean_s p_s], AU = mean_s H[p_s], EU = TU - AU, in float64 accumulation; members are
    processed a few at a time so the temporaries stay bounded for language-model vocabularies."""
    s = p.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, p[0].size))
    mean = np.zeros(p.shape[1:], dtype=np.float64)
    aleatoric = np.zeros(p.shape[1:-1], dtype=np.float64)
    for start in range(0, s, step):
        block = p[start:start + step].astype(np.float64)
        mean += block.sum(0)
        aleatoric -= xlogy(block, block).sum(-1).sum(0)
    mean /= s
    aleatoric /= s
    total = -xlogy(mean, mean).sum(-1)
    return {"total": total, "aleatoric": aleatoric, "epistemic": total - aleatoric}


def np_ece(mean_probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    confidence = mean_probs.max(-1).astype(np.float64)
    correct = (mean_probs.argmax(-1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=confidence - correct, minlength=n_bins)
    return float(np.abs(gap).sum() / confidence.size)


def np_brier(mean_probs: np.ndarray, labels: np.ndarray) -> float:
    squared = (mean_probs.astype(np.float64) ** 2).sum(-1)
    picked = np.take_along_axis(mean_probs, labels[:, None], -1)[:, 0].astype(np.float64)
    return float((squared - 2 * picked + 1).mean())  # Σ_c (p_c - 1[y=c])² expanded


def np_auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    scores = np.concatenate([score_in, score_out]).astype(np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    # Average ranks over ties: every run of equal scores gets the mean of its positions.
    starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1]
    ends = np.r_[starts[1:], ranked.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty_like(scores)
    ranks[order] = np.repeat(run_rank, ends - starts)
    n_in, n_out = score_in.size, score_out.size
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


# ---------------------------------------------------------------------------------------------
# torchmetrics versions

def tm_ece(mean_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return multiclass_calibration_error(mean_probs, labels, num_classes=mean_probs.shape[-1], n_bins=N_BINS,
                                        norm="l1", validate_args=False).item()


def tm_auroc(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    scores = torch.cat([score_in, score_out])
    target = torch.cat([torch.zeros(len(score_in), dtype=torch.long), torch.ones(len(score_out), dtype=torch.long)])
    return binary_auroc(scores, target, thresholds=None, validate_args=False).item()


# ---------------------------------------------------------------------------------------------

def make_probs(shape, scale: float, seed: int) -> torch.Tensor:
    """softmax(scale · N(0, 1) logits), in place (the LM case is 6.6 GB)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    x.mul_(scale)
    x.sub_(x.amax(-1, keepdim=True)).exp_()
    x.div_(x.sum(-1, keepdim=True))
    return x


def max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(max_diff(a[k], b[k]) for k in a)
    a = a.double().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.double().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)))


def timed(fn, repeats: int):
    """Runs each candidate `repeats` times, interleaved in a rotating order."""
    names = list(fn)
    seconds = {name: [] for name in names}
    values = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            values[name] = fn[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, values


def report(metric: str, seconds: dict, values: dict, results: list) -> None:
    base = statistics.median(seconds["raysweep"])
    for name, times in seconds.items():
        med = statistics.median(times)
        ratio = "" if name == "raysweep" else f"  {name}/raysweep {med / base:6.2f}x"
        diff = "" if name == "raysweep" else f"  max |diff| {max_diff(values['raysweep'], values[name]):.2e}"
        print(f"  {metric:10s} {name:12s} min {min(times):8.4f}s  median {med:8.4f}s  "
              f"max {max(times):8.4f}s{ratio}{diff}",
              flush=True)
        if name != "raysweep":
            results.append((metric, name, med / base, max_diff(values["raysweep"], values[name])))


def run_case(title: str, probs: torch.Tensor, ood: torch.Tensor, repeats: int, results: list) -> None:
    print(f"\n== {title}: probs {tuple(probs.shape)} {probs.dtype} "
          f"({probs.numel() * probs.element_size() / 2**30:.2f} GiB)",
          flush=True)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, probs.shape[-1], probs.shape[1:-1], generator=g).reshape(-1)
    p_np, labels_np = probs.numpy(), labels.numpy()

    seconds, values = timed({"raysweep": lambda: U.decompose(probs), "numpy": lambda: np_decompose(p_np)}, repeats)
    report("decompose", seconds, values, results)

    eu_in = U.decompose(probs)["epistemic"].reshape(-1)
    eu_out = U.decompose(ood)["epistemic"].reshape(-1)
    mean = probs.mean(0).reshape(-1, probs.shape[-1])  # (B, C) p̄, shared by every implementation
    mean_np = mean.numpy()

    seconds, values = timed({
        "raysweep": lambda: U.expected_calibration_error(mean, labels, N_BINS),
        "torchmetrics": lambda: tm_ece(mean, labels),
        "numpy": lambda: np_ece(mean_np, labels_np),
    }, repeats)
    report("ECE", seconds, values, results)

    seconds, values = timed({"raysweep": lambda: U.brier(mean, labels), "numpy": lambda: np_brier(mean_np, labels_np)},
                            repeats)
    report("Brier", seconds, values, results)

    seconds, values = timed({
        "raysweep": lambda: U.ood_auroc(eu_in, eu_out),
        "torchmetrics": lambda: tm_auroc(eu_in, eu_out),
        "numpy": lambda: np_auroc(eu_in.numpy(), eu_out.numpy()),
    }, repeats)
    report("AUROC", seconds, values, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lm-tokens", type=int, default=8192, help="tokens in the language-model case (0: skip it)")
    parser.add_argument("--lm-vocab", type=int, default=50257)
    parser.add_argument("--lm-members", type=int, default=4)
    args = parser.parse_args()
    print(f"[metrics] torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    results: list = []
    probs = make_probs((32, 100_000, 10), 2.0, 0)
    ood = make_probs((32, 100_000, 10), 1.0, 2)
    run_case("classification", probs, ood, args.repeats, results)
    del probs, ood
    if args.lm_tokens:
        shape = (args.lm_members, args.lm_tokens, args.lm_vocab)
        probs = make_probs(shape, 3.0, 3)
        ood = make_probs((args.lm_members, min(args.lm_tokens, 2048), args.lm_vocab), 2.0, 4)
        run_case("language model", probs, ood, max(2, args.repeats - 2), results)
        del probs, ood
    print(f"\n[metrics] load after: {os.getloadavg()[0]:.2f}")
    worst = max(diff for *_, diff in results)
    tm = [(metric, ratio) for metric, name, ratio, _ in results if name == "torchmetrics"]
    print(f"GOAL >= 2x torchmetrics: {'MET' if all(r >= 2 for _, r in tm) else 'NOT MET'} "
          f"({', '.join(f'{m} {r:.1f}x' for m, r in tm)}); values within 1e-6: "
          f"{'MET' if worst <= 1e-6 else 'NOT MET'} (largest difference {worst:.1e})")


if __name__ == "__main__":
    main()
