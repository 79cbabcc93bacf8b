"""Algorithmic sequences, as in the GPT-2 experiments of the paper: modular arithmetic.

Each example is the 5-token sequence  a op b = c  with c = (a op b) mod p, generated on the fly.
Only the answer token c is scored (other targets are -100, PyTorch's ignore index), so N counts
equations and the uncertainty is about the answer, not about random operands.

OOD sets: "unseen_operands" (a or b from a range never trained on) and "other_operation"
(the same operands under an operation never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysweep.tasks.base import Task
from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, TaskData, nested_subset

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


@dataclass(frozen=True)
class ModularArithmetic(Task):
    modulus: int = 97
    operation: str = "add"
    ood_operation: str = "sub"
    train_range: float = 0.8  # operands below train_range · p are in distribution
    n_test: int = 1000

    @property
    def vocab_size(self) -> int:
        return self.modulus + len(OPERATIONS) + 1  # numbers, one token per operation, "="

    def available_train_size(self) -> int:
        return self._in_range() ** 2 - self.n_test

    def ood_sets(self) -> tuple[str, ...]:
        return ("unseen_operands", "other_operation")

    def problems(self) -> str | None:
        allowed = ", ".join(OPERATIONS)
        for field, value in (("operation", self.operation), ("ood_operation", self.ood_operation)):
            if value not in OPERATIONS:
                return f"task.{field} {value!r} is not one of: {allowed}"
        if self.operation == self.ood_operation:
            return f"task.ood_operation must differ from task.operation, both are {self.operation!r}"
        if self.modulus < 3 or not 0 < self.train_range < 1:
            return f"task.modulus must be >= 3 and train_range in (0, 1), got {self.modulus}, {self.train_range}"
        if self.n_test >= self._in_range() ** 2:
            return f"task.n_test = {self.n_test} leaves no training pairs out of {self._in_range() ** 2}"
        return None

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        m = self._in_range()
        grid = torch.cartesian_prod(torch.arange(m), torch.arange(m))  # every in-range (a, b)
        order = torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))  # fixed split
        test_pairs, pool = grid[order[: self.n_test]], grid[order[self.n_test:]]
        train = self._encode(pool[nested_subset(len(pool), n, seed)], self.operation)
        n_eval = min(self.n_test, max_eval)
        eval_sets = {"test": self._encode(test_pairs[:n_eval], self.operation)}
        if "unseen_operands" in ood:
            g = torch.Generator().manual_seed(1)
            a = torch.randint(m, self.modulus, (n_eval,), generator=g)
            b = torch.randint(0, self.modulus, (n_eval,), generator=g)
            eval_sets["unseen_operands"] = self._encode(torch.stack([a, b], 1), self.operation)
        if "other_operation" in ood:
            eval_sets["other_operation"] = self._encode(test_pairs[:n_eval], self.ood_operation)
        return TaskData(kind=CLASSIFICATION, train_x=train[0], train_y=train[1], eval_sets=eval_sets,
                        n_classes=self.vocab_size)

    def _in_range(self) -> int:
        return int(self.modulus * self.train_range)

    def _encode(self, pairs: torch.Tensor, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) pairs -> inputs [a, op, b, =] and targets [-100, -100, -100, c]: predict c after '='."""
        a, b = pairs[:, 0], pairs[:, 1]
        p = self.modulus
        op_token = p + list(OPERATIONS).index(operation)
        equals = p + len(OPERATIONS)
        c = OPERATIONS[operation](a, b, p)
        x = torch.stack([a, torch.full_like(a, op_token), b, torch.full_like(a, equals)], 1)  # (B, 4)
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, -1] = c
        return x, y
