"""The protocol every task implements, with a default for each optional hook.

A task is a frozen config dataclass subclassing `Task`, in one file of raysweep/tasks/, with one
line in TASKS (tasks/__init__.py). It must give `load` and `available_train_size`; every other hook
has a default here, so the rest of raysweep calls hooks directly instead of probing with getattr.
"""

from __future__ import annotations

from typing import ClassVar


class Task:
    counts_tokens: ClassVar[bool] = False  # grid.n counts training tokens (sequence tasks), not examples

    def load(self, n: int, seed: int, ood: list[str], max_eval: int):
        """The cell's data: a raysweep.tasks.data.TaskData with n training examples (or tokens) drawn
        for `seed` (for one seed, smaller N are subsets of larger), the fixed "test" set and the
        requested OOD sets, each capped at max_eval examples."""
        raise NotImplementedError(f"task {type(self).__name__} has no load")

    def available_train_size(self) -> int:
        """The largest N this task can give."""
        raise NotImplementedError(f"task {type(self).__name__} has no available_train_size")

    def min_train_size(self) -> int:
        """The smallest N a cell can use (e.g. one whole sequence of a sequence task)."""
        return 1

    def min_train_size_reason(self) -> str:
        """Why min_train_size, said in the error that refuses a smaller N."""
        return "at least one training example"

    def ood_sets(self) -> tuple[str, ...]:
        """Names of the OOD evaluation sets this task offers (grid.ood picks among them)."""
        return ()

    def problems(self) -> str | None:
        """None, or a message naming a bad field of the task and what is allowed."""
        return None

    def problems_with(self, model) -> str | None:
        """None, or why `model` cannot take this task's inputs (images into a flat-vector model)."""
        return None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of image inputs, or None for flat or sequence inputs."""
        return None

    def plan_dims(self, max_eval: int, n_ood: int) -> tuple[int, int, int, int] | None:
        """(input_dim, output_dim, units per example, evaluation examples over all sets) for --plan
        without loading the data (tasks whose data may be out of reach, on a hub); None: --plan loads
        a small sample instead."""
        return None
