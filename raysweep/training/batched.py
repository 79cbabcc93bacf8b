"""One batched forward pass for M stacked copies of a plain nn.Sequential of common layers.

torch.func.vmap + functional_call runs any architecture, but on CPU every step pays for the module
call under vmap and for the per-operator batching rules, forward and backward; for small members
that overhead, not the arithmetic, sets the step time. For the layer types below the M members
need one ordinary op per layer instead: Linear as torch.baddbmm over the (M, out, in) weights,
Conv2d as one grouped convolution (members side by side in the channel axis, groups·M groups),
GroupNorm as one group norm with M·G groups; activations, dropout and pooling act on the batched
tensor as it is. The arithmetic is each member's own, so the result is the M separate networks'.
Written by hand because torch has no batched Sequential; every other model (residual blocks,
attention, layers with buffers) keeps the generic vmap path (StackedMembers decides, `supports`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Where the M members sit in a tensor between layers:
SHARED = "shared"  # (B, ...): one input for every member (prediction on a common batch)
STACKED = "stacked"  # (M, B, ...): members first, what Linear and the caller use
GROUPED = "grouped"  # (B, M·C, ...): members side by side in the channel axis, what Conv2d uses
FEATURES_FIRST = "features first"  # (M, F, B): between Linear layers, so that each is one W·x


def to_stacked(x: torch.Tensor, layout: str, members: int) -> torch.Tensor:
    if layout == STACKED:
        return x
    if layout == SHARED:
        return x.expand(members, *x.shape)  # a view: no copy
    if layout == FEATURES_FIRST:
        return x.transpose(1, 2)
    b, channels, *rest = x.shape
    return x.reshape(b, members, channels // members, *rest).movedim(1, 0)  # (M, B, C, ...)


def to_grouped(x: torch.Tensor, layout: str, members: int) -> torch.Tensor:
    if layout == GROUPED:
        return x
    if layout == SHARED:
        return x.repeat(1, members, *[1] * (x.dim() - 2))  # channel m·C + c is member m's channel c
    m, b, channels, *rest = (x := to_stacked(x, layout, members)).shape
    return x.movedim(0, 1).reshape(b, m * channels, *rest)  # (B, M·C, ...)


def linear(layer: nn.Linear, p: dict, x: torch.Tensor, layout: str, members: int):
    # y = W·x with features first, (M, out, in)·(M, in, B): consecutive Linear layers need no
    # transposes in between, and the weight gradient comes out in the weight's own (M, out, in)
    # layout, so autograd does not copy it into place on every step.
    if layout == FEATURES_FIRST:
        inputs, shape = x, None
    else:
        stacked = to_stacked(x, layout, members)
        inputs = stacked.reshape(members, -1, stacked.shape[-1]).transpose(1, 2)  # (M, in, B·…)
        shape = stacked.shape[:-1] if stacked.dim() > 3 else None
    weight = p["weight"]
    out = torch.bmm(weight, inputs) if "bias" not in p else torch.baddbmm(p["bias"].unsqueeze(2), weight, inputs)
    if shape is None:
        return out, FEATURES_FIRST  # (M, out, B)
    return out.transpose(1, 2).reshape(*shape, out.shape[1]), STACKED  # (M, B, …, out)


def conv2d(layer: nn.Conv2d, p: dict, x: torch.Tensor, layout: str, members: int):
    weight = p["weight"].flatten(0, 1)  # (M·out, in/groups, kh, kw)
    bias = p["bias"].flatten() if "bias" in p else None
    out = F.conv2d(to_grouped(x, layout, members), weight, bias, layer.stride, layer.padding, layer.dilation,
                   layer.groups * members)
    return out, GROUPED


def group_norm(layer: nn.GroupNorm, p: dict, x: torch.Tensor, layout: str, members: int):
    # Member m's C channels are contiguous, so its G groups are groups m·G … m·G + G - 1 of M·G.
    weight = p["weight"].flatten() if "weight" in p else None
    bias = p["bias"].flatten() if "bias" in p else None
    return F.group_norm(to_grouped(x, layout, members), layer.num_groups * members, weight, bias, layer.eps), GROUPED


def per_channel(layer: nn.Module, p: dict, x: torch.Tensor, layout: str, members: int):
    """Pooling acts on each channel alone: a shared batch stays shared, stacked members are grouped."""
    if layout != SHARED:
        x, layout = to_grouped(x, layout, members), GROUPED
    return layer(x), layout


def elementwise(layer: nn.Module, p: dict, x: torch.Tensor, layout: str, members: int):
    return layer(x), layout


def dropout(layer: nn.Module, p: dict, x: torch.Tensor, layout: str, members: int):
    if layout == SHARED and layer.training:
        x, layout = to_stacked(x, layout, members), STACKED  # every member draws its own mask
    return layer(x), layout


def flatten(layer: nn.Flatten, p: dict, x: torch.Tensor, layout: str, members: int):
    if layout == SHARED:
        return layer(x), SHARED
    return to_stacked(x, layout, members).flatten(2), STACKED


LAYERS = {
    nn.Linear: linear,
    nn.Conv2d: conv2d,
    nn.GroupNorm: group_norm,
    nn.MaxPool2d: per_channel, nn.AvgPool2d: per_channel,
    nn.AdaptiveAvgPool2d: per_channel, nn.AdaptiveMaxPool2d: per_channel,
    nn.ReLU: elementwise, nn.GELU: elementwise, nn.Tanh: elementwise, nn.Sigmoid: elementwise,
    nn.SiLU: elementwise, nn.LeakyReLU: elementwise, nn.ELU: elementwise, nn.Identity: elementwise,
    nn.Dropout: dropout,
    nn.Flatten: flatten,
}


def layer_supported(layer: nn.Module) -> bool:
    # Exact types: a subclass may have its own forward.
    if type(layer) not in LAYERS or any(True for _ in layer.buffers()):
        return False
    if isinstance(layer, nn.Conv2d):
        return layer.padding_mode == "zeros"
    if isinstance(layer, nn.Flatten):
        return layer.start_dim == 1 and layer.end_dim == -1
    return not getattr(layer, "inplace", False)  # an in-place activation could overwrite a saved input


def supports(network: nn.Module) -> bool:
    """Can `forward` run M copies of this network? (A flat nn.Sequential of the layers above.)"""
    return type(network) is nn.Sequential and all(layer_supported(layer) for layer in network)


def forward(network: nn.Sequential, params: dict[str, torch.Tensor], x: torch.Tensor, members: int,
            shared_input: bool) -> torch.Tensor:
    """params: the stacked (M, ...) parameters by name ("0.weight"); x: (B, ...) shared or (M, B, ...).
    Returns (M, B, ...) outputs. `network` only lends its layers' settings (it may be on the meta device)."""
    layout = SHARED if shared_input else STACKED
    for index, layer in enumerate(network):
        prefix = f"{index}."
        own = {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}
        x, layout = LAYERS[type(layer)](layer, own, x, layout, members)
    return to_stacked(x, layout, members)
