"""How long a cell trains: the budget modes, the validation split early stopping watches, the log of
what a training run did, and the check that stops a diverging run.

Two modes (Train.until):

  "fixed"      train.epochs passes, raised to at least train.min_steps optimiser steps (the budget of
               earlier versions: the same for every N, so small N memorise and large N stop short)
  "converged"  early stopping: a validation split of train.val_fraction of the cell's N training
               examples is held out (hold_out_validation; never the test set), the loss on it is
               checked after every epoch, and training stops once it has not improved (by 1%,
               MIN_IMPROVEMENT) for train.patience_steps optimiser steps (at least train.min_steps
               are run), or at the cap
               of train.max_epochs. Each member's best weights (lowest validation loss) are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

FIXED, CONVERGED = "fixed", "converged"
# An epoch counts as an improvement only if it lowers a member's best validation loss by this share:
# without it, the slow drift of a memorised set's validation loss (or noise, over M members) resets
# the patience forever and every small-N cell ran to the cap.
MIN_IMPROVEMENT = 0.01
MODES = (FIXED, CONVERGED)
# stop reasons stored per cell
STOP_FIXED, STOP_CONVERGED, STOP_CAP = "fixed", "converged", "cap"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell is recorded as failed, not retried."""


def steps_per_epoch(train, n: int) -> int:
    """Minibatches in one pass over n examples (the last one may be short)."""
    return math.ceil(n / min(train.batch_size, n))


def epochs_for(train, n: int) -> int:
    """The fixed budget: train.epochs, raised so that the run takes at least train.min_steps optimiser
    steps. In the converged mode it is the number of epochs a method's second phase (SWAG's SGD,
    SGHMC's and cSGLD's sampling) runs: a length that does not depend on when early stopping stopped."""
    return max(train.epochs, math.ceil(train.min_steps / steps_per_epoch(train, n)))


def guaranteed_steps(train, n: int) -> int:
    """A lower bound on the optimiser steps every run of this budget takes on n examples: the fixed
    budget's exact count; early stopping runs at least min_steps, patience_steps and one epoch, within
    its cap of max_epochs."""
    per_epoch = steps_per_epoch(train, n)
    if train.until == CONVERGED:
        return min(train.max_epochs * per_epoch, max(train.min_steps, train.patience_steps, per_epoch))
    return epochs_for(train, n) * per_epoch


def max_epochs(train, n: int) -> int:
    """Epochs the training loop may run: the fixed budget, or the converged mode's cap."""
    return train.max_epochs if train.until == CONVERGED else epochs_for(train, n)


def check_finite(epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged at epoch {epoch}: loss={loss}")


def describe(train) -> str:
    """The budget in one string, stored per cell (column `budget`)."""
    if train.until == CONVERGED:
        return (f"converged(val_fraction={train.val_fraction},patience_steps={train.patience_steps},"
                f"min_steps={train.min_steps},max_epochs={train.max_epochs})")
    return f"fixed(epochs={train.epochs},min_steps={train.min_steps})"


# ---------------------------------------------------------------------------------------------
# The validation split

def validation_size(train, n: int) -> int:
    """Examples of n held out for early stopping: val_fraction of them, at least one, and at least one
    left to train on. 0 in the fixed mode (nothing to watch, every example trains)."""
    if train.until != CONVERGED or n < 2:
        return 0
    return min(max(1, round(train.val_fraction * n)), n - 1)


def hold_out_validation(data, train, seed: int):
    """The cell's data with validation_size(N) of its N training examples moved to
    data.extras["validation"] (x, y): a seed-fixed random subset of that N's own training pool."""
    n = len(data.train_x)
    held = validation_size(train, n)
    if held == 0:
        return data
    order = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    val, fit = order[:held], order[held:]
    extras = dict(data.extras, validation=(data.train_x[val], data.train_y[val]))
    return replace(data, train_x=data.train_x[fit], train_y=data.train_y[fit], extras=extras)


# ---------------------------------------------------------------------------------------------
# Early stopping

class EarlyStopping:
    """Watches the validation loss of M members after each epoch. Keeps each member's best weights
    (stacked (M, ...) tensors) and says when no member has improved for `patience_steps` steps."""

    def __init__(self, train, steps_per_epoch: int):
        self.patience, self.min_steps, self.per_epoch = train.patience_steps, train.min_steps, steps_per_epoch
        self.best_loss, self.best_params, self.best_step, self.steps = None, None, 0, 0

    def update(self, losses: torch.Tensor, params: dict[str, torch.Tensor]) -> bool:
        """losses (M,) after one more epoch; returns True when training should stop."""
        self.steps += self.per_epoch
        if self.best_loss is None:
            self.best_loss = losses.clone()
            self.best_params = {name: value.detach().clone() for name, value in params.items()}
            self.best_step = self.steps
            return False
        better = losses < self.best_loss * (1 - MIN_IMPROVEMENT)
        if better.any():
            self.best_step = self.steps
            self.best_loss = torch.where(better, losses, self.best_loss)
            for name, value in params.items():
                mask = better.view(-1, *[1] * (value.dim() - 1))
                self.best_params[name] = torch.where(mask, value.detach(), self.best_params[name])
        return self.steps >= self.min_steps and self.steps - self.best_step >= self.patience

    def restore(self, params: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in params.items():
                value.copy_(self.best_params[name])


# ---------------------------------------------------------------------------------------------
# What a training run did, for the results

@dataclass
class Outcome:
    epochs_run: int
    train_loss: float  # mean member loss of the last epoch run
    val_loss: float | None  # mean member validation loss of the weights kept (converged mode)
    stop_reason: str  # STOP_FIXED, STOP_CONVERGED or STOP_CAP


class TrainingLog:
    """The on_epoch callback cell.py passes to a method: forwards every (epoch, loss) and keeps the
    training loop's Outcome (the first one: the training phase, not a method's later phases)."""

    def __init__(self, on_epoch):
        self.on_epoch, self.outcome, self.last_epoch, self.last_loss = on_epoch, None, 0, None

    def __call__(self, epoch: int, loss: float) -> None:
        # Numbered by count: a method's second phase numbers its epochs after the fixed budget
        # (trained + epoch), which in the converged mode is not how many epochs training ran.
        self.last_epoch, self.last_loss = self.last_epoch + 1, loss
        self.on_epoch(self.last_epoch, loss)

    def finished(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome


def report_outcome(on_epoch, outcome: Outcome) -> None:
    """Tell a TrainingLog how the training phase ended; a plain callback (tests, notebooks) needs nothing."""
    if isinstance(on_epoch, TrainingLog):
        on_epoch.finished(outcome)
