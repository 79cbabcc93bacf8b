"""M members of one architecture held as stacked (M, ...) parameters, run as one model: a batched
model (batched.py) for plain Sequentials of common layers, torch.func (stack_module_state + vmap)
for everything else.

Small members are far too small to keep two cores busy one at a time; stacked, the M forward and
backward passes become one batched pass. Each member keeps its own initialisation and its own data
order, and the optimizers used are element-wise, so the result equals M independent training runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from raysweep.training import batched


class StackedMembers:
    """M members of one architecture held as stacked parameters: each tensor is (M, ...)."""

    def __init__(self, members: list[nn.Module]):
        params, buffers = stack_module_state(members)
        self.hold(params, buffers, members[0], len(members))

    @classmethod
    def of(cls, params: dict, buffers: dict, network: nn.Module) -> StackedMembers:
        """Members given as already stacked (M, ...) parameters and buffers of `network`'s architecture."""
        members = cls.__new__(cls)
        members.hold(params, buffers, network, len(next(iter(params.values()))))
        return members

    def hold(self, params: dict, buffers: dict, network: nn.Module, size: int) -> None:
        self.params, self.buffers, self.size = params, buffers, size
        self.skeleton = copy.deepcopy(network).to("meta").train()  # structure only; weights come from params
        # Plain Sequentials of common layers run as one batched model, without vmap's per-step overhead.
        self.batched = batched.supports(self.skeleton) and not buffers

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, x: torch.Tensor, *, shared_input: bool, train: bool) -> torch.Tensor:
        """x: (B, D) shared by every member, or (M, B, D) one batch per member. Returns (M, B, out)."""
        if self.skeleton.training != train:  # Module.train walks every submodule: not once per step
            self.skeleton.train(train)
        if self.batched:
            return batched.forward(self.skeleton, self.params, x, self.size, shared_input)
        return self.vmapped(x, shared_input)

    def vmapped(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """The generic path, for any architecture vmap can batch."""
        def one(params, buffers, inputs):
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)
