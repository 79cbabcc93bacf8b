"""The protocol every method implements, and the one place its hooks are documented.

A method is one file, `raysweep/methods/<name>.py`, holding a frozen `Options` dataclass (or none)
and a subclass of `Method`; one line in `REGISTRY` (methods/__init__.py) makes it known to
experiments, `--set methods.<name>.<field>`, `--plan`, the Ray edge and the results (the file name,
`Method.name` and the `method` value in the results are the same word).

    class Toy(Method):
        name = "toy"
        Options = ToyOptions                     # frozen dataclass with smoke() and problems()

        def fit(self, data, model, options, train, seed, on_epoch, device="cpu"):
            ...                                  # train, then return a posterior

The posterior returned by `fit` has `predict(x)` returning S predictive distributions for the batch:
classification: probabilities (S, B, C) (language models: (S, B, T, V)); regression: Gaussian means
(S, B) and variances (S, B); on the device of x (the posterior moves x to its own device).

Every hook has a default here, so a method overrides only what differs; nothing is discovered by
`getattr`. What `--plan` needs (networks trained, training phases, samples S) and what the Ray edge
needs (worker placement) are hooks too, so neither plan.py nor ray_train.py names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

OnEpoch = Callable[[int, float], None]  # (epoch, mean training loss of that epoch)


@dataclass(frozen=True)
class NoOptions:
    """The settings of a method that has none."""

    def smoke(self) -> NoOptions:
        return self

    def problems(self) -> str | None:
        return None


class Method:
    name: ClassVar[str]  # the registry key, the file name and the `method` value in the results
    Options: ClassVar[type] = NoOptions  # frozen dataclass: smoke() -> shrunk copy, problems() -> str | None
    uses_model: ClassVar[bool] = True  # trains the experiment's network (False: the size axis does not apply)

    def unsupported(self, task) -> str | None:
        """Why this method cannot run `task`, or None. Checked before Ray starts."""
        return None

    def unsupported_model(self, model) -> str | None:
        """Why this method cannot use `model` (a model config), or None. Checked before Ray starts
        and again by fit before any training."""
        return None

    def fit(self, data, model, options, train, seed: int, on_epoch: OnEpoch, device: str = "cpu"):
        """Train on data.train_x/train_y (a raysweep.tasks.data.TaskData) and return the posterior."""
        raise NotImplementedError(f"method {self.name!r} has no fit")

    # ---- what --plan and the Ray edge need to know

    def networks_trained(self, options) -> int:
        """Networks trained from scratch per cell (an ensemble trains M)."""
        return 1

    def training_phases(self, options) -> int:
        """Passes of the training budget each network runs (SWAG, SGHMC, cSGLD: training, then as many
        steps again of their own SGD or sampling phase)."""
        return 1

    def samples(self, options) -> int:
        """S: predictive distributions per input at prediction (members or posterior samples)."""
        return 1

    def train_workers(self, options) -> int:
        """Ray Train workers a cell of this method needs (each with the experiment's resources);
        0: the cell runs inside its Tune trial, batched with other cells."""
        return 0

    def facts(self, posterior) -> dict:
        """Columns of the method's own stored with every row of the cell (IVON: how much of its
        Hessian estimate is still its initial guess); none by default."""
        return {}

    def __repr__(self) -> str:
        return f"<method {self.name}>"
