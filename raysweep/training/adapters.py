"""Training the trainable part of a network whose base is frozen (LoRA adapters and a head), and
ensembles of such adapters on one frozen base.

The stacked loop (raysweep.training.loop) would copy every parameter M times, the frozen base
included, and run it under vmap; here there is one network, the optimizer sees only the parameters
that require a gradient, and an ensemble member is nothing but a saved copy of those parameters.
Members train one after another (Model.stackable = False), each re-drawn by
`network.reset_trainable(seed)` and with its own data order; prediction loads each member's
parameters into the one network in turn.
"""

from __future__ import annotations

import torch
from torch import nn

from raysweep.training import optim
from raysweep.training.budget import check_finite, epochs_for
from raysweep.training.likelihood import loss_per_member, to_prediction
from raysweep.training.loop import minibatches, seeded_network


def trainable(network: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in network.named_parameters() if p.requires_grad}


def snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainable(network).items()}


@torch.no_grad()
def load(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = trainable(network)
    for name, value in state.items():
        params[name].copy_(value)


def train_trainable(network: nn.Module, data, train, seed: int, optimizer: str = "adam") -> list[float]:
    """Minibatch training of the network's trainable parameters; returns the mean loss of each epoch."""
    device = next(network.parameters()).device
    x, y = data.train_x.to(device), data.train_y.to(device)
    optimizer = optim.make(optimizer, list(trainable(network).values()), train)
    losses = []
    network.train()
    for epoch, batches in minibatches(len(x), train.batch_size, epochs_for(train, len(x)), seed, device):
        total = torch.zeros((), device=device)
        for idx in batches:
            loss = loss_per_member(network(x[idx]).unsqueeze(0), y[idx].unsqueeze(0), data.kind)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        losses.append(total.item() / len(batches))
        check_finite(epoch, losses[-1])
    network.eval()
    return losses


class AdapterMembers:
    """M members held as M copies of the trainable parameters of one network."""

    def __init__(self, network: nn.Module, states: list[dict[str, torch.Tensor]], kind: str):
        self.network, self.states, self.kind = network, states, kind
        self.device = next(network.parameters()).device

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = []
        for state in self.states:
            load(self.network, state)
            outputs.append(self.network(x.to(self.device)).float())
        return to_prediction(torch.stack(outputs).to(x.device), self.kind)  # (M, B, C) or (M, B, T, V)


def fit_members(data, model, members: int, train, seed: int, on_epoch, device) -> AdapterMembers:
    """Train `members` adapters one after another on one frozen base; on_epoch gets the mean loss over
    members per epoch once all have trained (as the DeepSpeed engine reports)."""
    network = seeded_network(model, data, seed, device)
    states, losses = [], []
    for member in range(members):
        member_seed = seed * 1_000 + member
        if member:
            network.reset_trainable(member_seed)
        losses.append(train_trainable(network, data, train, member_seed))
        states.append(snapshot(network))
    for epoch, values in enumerate(zip(*losses), start=1):
        on_epoch(epoch, sum(values) / len(values))
    return AdapterMembers(network, states, data.kind)
