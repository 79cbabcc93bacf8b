"""Model-family registry. A model is a frozen config dataclass with a `size_knob` class attribute
naming the integer field the grid's `sizes` axis sets, `build(input_dim, output_dim, dropout)` and
`problems()`."""

import torch

from raysweep.models.cnn import CNN
from raysweep.models.gpt import GPT
from raysweep.models.linear import Linear
from raysweep.models.lora import LoRA
from raysweep.models.mlp import MLP
from raysweep.models.resnet import ResNet, WideResNet
from raysweep.models.vit import ViT

MODELS = {
    "mlp": MLP,
    "gpt": GPT,
    "cnn": CNN,
    "resnet": ResNet,
    "wrn": WideResNet,
    "vit": ViT,
    "linear": Linear,
    "lora": LoRA,
}


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters: a frozen pretrained base (LoRA) is not part of P."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_count(model, input_dim: int, output_dim: int) -> int:
    """P of the network `model` builds, counted on the meta device: nothing is allocated or initialised
    (initialising a GPT-2-XL on a CPU just to count it takes tens of seconds)."""
    with torch.device("meta"):
        return count_parameters(model.build(input_dim, output_dim))
