"""Deep ensembles (Lakshminarayanan et al., 2017): M members from different initialisations and
data orders, trained together (vectorised) and averaged at prediction."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from raysweep.methods.training import StackedMembers, to_prediction, train_members

uses_model = True


@dataclass(frozen=True)
class Options:
    members: int = 5

    def smoke(self) -> "Options":
        return replace(self, members=min(self.members, 2))

    def problems(self) -> str | None:
        return None if self.members >= 1 else f"methods.ensemble.members must be >= 1, got {self.members}"


def unsupported(task) -> str | None:
    return None


class Posterior:
    def __init__(self, stack: StackedMembers, kind: str):
        self.stack, self.kind = stack, kind

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = self.stack.forward(x.to(self.stack.device), shared_input=True, train=False)  # (M, B, out)
        return to_prediction(outputs.to(x.device), self.kind)  # (S=M, B, C) or (M, B) means and variances


def fit(data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
    torch.manual_seed(seed)
    members = [model.build(data.input_dim, data.output_dim).to(device) for _ in range(options.members)]
    stack = train_members(StackedMembers(members), data, train, seed, on_epoch)
    return Posterior(stack, data.kind)
