"""The minibatch training loops: every member of a stack at once, or one network (M = 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, TaskData
from raysweep.training import budget, optim
from raysweep.training.budget import check_finite, steps_per_epoch
from raysweep.training.likelihood import loss_per_member, scored_units
from raysweep.training.stack import StackedMembers


def seeded_network(model, data: TaskData, seed: int, device) -> nn.Module:
    """One freshly initialised network for the task, its initialisation fixed by the seed."""
    torch.manual_seed(seed)
    return model.build(data.input_dim, data.output_dim).to(device)


def augmenter(data: TaskData, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The task's training-time augmentation (TaskData.extras["augment"], e.g. random crop + flip),
    drawing from a generator of its own so a cell is repeatable; the identity when the task has none.
    Every training loop passes each minibatch's inputs through it; evaluation never does."""
    augment = data.extras.get("augment")
    if augment is None:
        return lambda inputs: inputs
    generator = torch.Generator().manual_seed(seed)
    return lambda inputs: augment(inputs, generator)


@dataclass(frozen=True)
class Objective:
    """What each member minimises besides the mean NLL of the data's targets (by default nothing):
    randomize-then-optimize (training/anchored.py) gives every member its own targets and its own
    prior penalty, and decays the step size to 0 so that each member ends at its optimum."""

    targets: torch.Tensor | None = None  # (M, N) targets per member; None: data.train_y for every member
    penalty: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None  # stacked params -> (M,) added loss
    schedule: Callable[[torch.optim.Optimizer, int], object] | None = None  # (optimizer, total steps) -> LR scheduler


def train_members(
    stack: StackedMembers,
    data: TaskData,
    train,
    seed: int,
    on_epoch: Callable[[int, float], None],
    optimizer: str | optim.Factory = "adam",
    objective: Objective = Objective(),
) -> StackedMembers:
    """Minibatch training of every member at once with the optimizer a method chose (a name in
    training.optim.OPTIMIZERS, or a factory); reports the mean member loss after each epoch.
    train.until="converged" stops early on the validation split (data.extras["validation"], see
    budget.hold_out_validation) and keeps each member's best weights; how the run ended goes to
    on_epoch (budget.report_outcome)."""
    device = stack.device
    x, y = data.train_x.to(device), data.train_y.to(device)
    optimizer = optim.make(optimizer, list(stack.params.values()), train)
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(x), min(train.batch_size, len(x))
    steps = steps_per_epoch(train, n)
    may_ignore = data.kind == CLASSIFICATION and bool((y == IGNORE_INDEX).any())
    augment = augmenter(data, seed)
    watch = _early_stopping(stack, data, train, steps)
    epochs, stop_reason = budget.max_epochs(train, n), budget.STOP_FIXED if watch is None else budget.STOP_CAP
    member_targets = None if objective.targets is None else objective.targets.to(device)  # (M, N)
    rows = torch.arange(stack.size, device=device)[:, None]  # (M, 1): member m reads its own targets
    scheduler = objective.schedule(optimizer, steps * epochs) if objective.schedule else None
    for epoch in range(1, epochs + 1):
        # Every member sees the data in its own order.
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(stack.size)]).to(device)  # (M, N)
        total = torch.zeros((), device=device)  # summed where the losses are: no host sync per step
        for step in range(steps):
            idx = order[:, step * batch:(step + 1) * batch]  # (M, b)
            targets = y[idx] if member_targets is None else member_targets[rows, idx]  # (M, b)
            with optim.sampling(optimizer):  # a variational optimizer (IVON) draws this pass's weights
                outputs = stack.forward(augment(x[idx]), shared_input=False, train=True)
                losses = loss_per_member(outputs, targets, data.kind, may_ignore)  # (M,)
                penalised = losses if objective.penalty is None else losses + objective.penalty(stack.params)
                optimizer.zero_grad(set_to_none=True)
                penalised.sum().backward()  # members share no parameters, so each gets its own gradient
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += losses.detach().mean()
        epoch_loss = total.item() / steps
        check_finite(epoch, epoch_loss)
        on_epoch(epoch, epoch_loss)
        if watch is not None and watch.stopping(epoch):
            stop_reason = budget.STOP_CONVERGED
            break
    val_loss = watch.finish() if watch is not None else None
    budget.report_outcome(on_epoch, budget.Outcome(epoch, epoch_loss, val_loss, stop_reason))
    return stack


class _Watch:
    """Early stopping of a stack on its validation split: the loss per member, in eval mode."""

    def __init__(self, stack: StackedMembers, data: TaskData, train, steps: int):
        val_x, val_y = data.extras["validation"]
        self.stack, self.kind = stack, data.kind
        self.x, self.y = val_x.to(stack.device), val_y.to(stack.device)
        self.rule = budget.EarlyStopping(train, steps)

    @torch.no_grad()
    def losses(self) -> torch.Tensor:
        """(M,) mean validation loss per member over scored targets, in chunks of examples."""
        total, count = torch.zeros(self.stack.size, device=self.stack.device), 0
        for xs, ys in zip(self.x.split(VALIDATION_BATCH), self.y.split(VALIDATION_BATCH)):
            outputs = self.stack.forward(xs, shared_input=True, train=False)
            targets = ys.expand(self.stack.size, *ys.shape).contiguous()
            units = scored_units(ys, self.kind)
            total += loss_per_member(outputs, targets, self.kind) * units
            count += units
        return total / max(count, 1)

    def stopping(self, epoch: int) -> bool:
        return self.rule.update(self.losses(), self.stack.params)

    def finish(self) -> float:
        """Put every member's best weights back; returns their mean validation loss."""
        self.rule.restore(self.stack.params)
        return self.rule.best_loss.mean().item()


VALIDATION_BATCH = 512  # examples per validation forward pass


def _early_stopping(stack: StackedMembers, data: TaskData, train, steps: int) -> _Watch | None:
    if train.until != budget.CONVERGED:
        return None
    if "validation" not in data.extras:
        raise ValueError('train.until="converged" needs a validation split: run the cell through '
                         'raysweep.cell.run_cell, or call budget.hold_out_validation(data, train, seed) first')
    return _Watch(stack, data, train, steps)


def train_network(network: nn.Module, data: TaskData, train, seed: int, on_epoch,
                  optimizer: str | optim.Factory = "adam") -> nn.Module:
    """Minibatch training of one network (the same loop as the ensembles, with M = 1); returns it trained."""
    stack = train_members(StackedMembers([network]), data, train, seed, on_epoch, optimizer)
    with torch.no_grad():
        for name, value in network.named_parameters():
            value.copy_(stack.params[name][0])
    return network


def minibatches(n: int, batch: int, epochs: int, seed: int, device):
    """Yield (epoch, index tensors of that epoch's minibatches): `epochs` seed-fixed passes over n examples."""
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch, n)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        yield epoch, order.split(batch)
