"""Image classification. The offline default is scikit-learn's bundled 8x8 digits (1,797 images)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysweep.tasks.data import CLASSIFICATION, TaskData, nested_subset

N_DIGITS = 1797
SPLIT_SEED = 12345  # fixes which images are held out for evaluation, for every cell


@dataclass(frozen=True)
class Digits:
    """Handwritten digits; OOD sets:

    - "rotated": the test digits turned 90°, no longer a readable digit of any class,
      with the same pixel statistics, so only a model that knows what it has not seen can flag them;
    - "noise": uniform random pixels at the digits' intensity range.
    """

    n_test: int = 397

    def available_train_size(self) -> int:
        return N_DIGITS - self.n_test

    def ood_sets(self) -> tuple[str, ...]:
        return ("rotated", "noise")

    def problems(self) -> str | None:
        if not 0 < self.n_test < N_DIGITS:
            return f"task.n_test must be in 1..{N_DIGITS - 1}, got {self.n_test}"
        return None

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        from sklearn.datasets import load_digits  # ships with scikit-learn: no download

        digits = load_digits()
        images = torch.from_numpy(digits.images).float() / 16.0  # (1797, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(N_DIGITS, generator=torch.Generator().manual_seed(SPLIT_SEED))
        test_idx, pool_idx = order[: self.n_test], order[self.n_test:]
        train_idx = pool_idx[nested_subset(len(pool_idx), n, seed)]
        test_images = images[test_idx][:max_eval]
        eval_sets = {"test": (test_images.flatten(1), labels[test_idx][:max_eval])}
        if "rotated" in ood:
            eval_sets["rotated"] = (torch.rot90(test_images, 1, dims=(1, 2)).flatten(1), None)
        if "noise" in ood:
            noise = torch.rand(len(test_images), 64, generator=torch.Generator().manual_seed(SPLIT_SEED))
            eval_sets["noise"] = (noise, None)
        return TaskData(
            kind=CLASSIFICATION,
            train_x=images[train_idx].flatten(1),
            train_y=labels[train_idx],
            eval_sets=eval_sets,
            n_classes=10,
        )
