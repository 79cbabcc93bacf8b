"""Deep ensembles (Lakshminarayanan et al., 2017): M members from different initialisations and
data orders, averaged at prediction.

engine="vmap" trains small members together as one vectorised model (raysweep.training.loop); engine="deepspeed"
trains large members one after another with DeepSpeed ZeRO (deepspeed_members.py), each member spread
over `workers_per_member` Ray Train workers when the sweep runs on Ray.

prior="anchored": randomize-then-optimize / anchored ensembles (Pearce et al., 2020): each member
is pulled towards its own draw from the N(0, 1/α) prior and, when the task states its noise
variance, fits its own noise-perturbed targets (training/anchored.py). On the linear-Gaussian model
every member is then an exact posterior draw; prior="none" is the plain deep ensemble, whose members
all converge to the same least-squares fit there (EU → 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from raysweep.methods.base import Method
from raysweep.training.anchored import train_anchored
from raysweep.training.likelihood import to_prediction
from raysweep.training.loop import train_members
from raysweep.training.stack import StackedMembers

ENGINES = ("vmap", "deepspeed")
PRIORS = ("none", "anchored")


@dataclass(frozen=True)
class Options:
    members: int = 5
    engine: str = "vmap"  # "vmap": all members as one batched model; "deepspeed": one by one with ZeRO
    zero_stage: int = 2  # deepspeed engine: 0 (plain data parallel) to 3 (parameters sharded too)
    workers_per_member: int = 1  # deepspeed engine: Ray Train workers (GPUs) that train each member
    prior: str = "none"  # "anchored": randomize-then-optimize members (vmap engine only)
    prior_precision: float = 1.0  # α of the anchors' N(0, 1/α) prior (prior="anchored")

    def smoke(self) -> Options:
        return replace(self, members=min(self.members, 2))

    def problems(self) -> str | None:
        if self.members < 2:
            # one member has no spread: EU ≡ 0, which every fit of EU would then drop without a word
            return (f"methods.ensemble.members must be >= 2 (one member has no spread, so its epistemic "
                    f"uncertainty is 0 by construction), got {self.members}")
        if self.engine not in ENGINES:
            return f"methods.ensemble.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}"
        if self.zero_stage not in (0, 1, 2, 3):
            return f"methods.ensemble.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}"
        if self.workers_per_member < 1:
            return f"methods.ensemble.workers_per_member must be >= 1, got {self.workers_per_member}"
        if self.prior not in PRIORS:
            return f"methods.ensemble.prior must be one of {', '.join(PRIORS)}, got {self.prior!r}"
        if not self.prior_precision > 0:
            return f"methods.ensemble.prior_precision must be > 0, got {self.prior_precision}"
        if self.prior == "anchored" and self.engine != "vmap":
            return f"methods.ensemble.prior='anchored' needs engine='vmap', got engine={self.engine!r}"
        return None


class Posterior:
    def __init__(self, stack: StackedMembers, kind: str):
        self.stack, self.kind = stack, kind

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = self.stack.forward(x.to(self.stack.device), shared_input=True, train=False)  # (M, B, out)
        return to_prediction(outputs.to(x.device), self.kind)  # (S=M, B, C) or (M, B) means and variances


class Ensemble(Method):
    """Deep ensembles: M members, each its own initialisation and data order."""

    name = "ensemble"
    Options = Options

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu"):
        if options.engine == "deepspeed":
            from raysweep.training import deepspeed_members

            return deepspeed_members.fit(data, model, options, train, seed, on_epoch, device)
        if not model.stackable:  # e.g. LoRA: M adapters trained one after another on one frozen base
            from raysweep.training import adapters

            return adapters.fit_members(data, model, options.members, train, seed, on_epoch, device)
        torch.manual_seed(seed)
        members = [model.build(data.input_dim, data.output_dim).to(device) for _ in range(options.members)]
        if options.prior == "anchored":
            stack = train_anchored(StackedMembers(members), data, train, seed, on_epoch, options.prior_precision)
        else:
            stack = train_members(StackedMembers(members), data, train, seed, on_epoch)
        return Posterior(stack, data.kind)

    def networks_trained(self, options: Options) -> int:
        return options.members

    def samples(self, options: Options) -> int:
        return options.members

    def train_workers(self, options: Options) -> int:
        return options.workers_per_member if options.engine == "deepspeed" else 0
