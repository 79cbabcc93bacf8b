"""The protocol every model family implements, with a default for each optional hook.

A model family is a frozen config dataclass subclassing `Model`, in one file of raysweep/models/,
with one line in MODELS (models/__init__.py).
"""

from __future__ import annotations

from typing import ClassVar


class Model:
    size_knob: ClassVar[str]  # the integer field the grid's `sizes` axis sets (e.g. "width")
    takes_images: ClassVar[bool] = False  # inputs are (N, C, H, W) images, not flat vectors or tokens
    # False: ensemble members are not stacked copies; the network build() returns trains one member after
    # another on its trainable parameters, re-drawn by `network.reset_trainable(seed)` (LoRA adapters on
    # one frozen base: raysweep.training.adapters).
    stackable: ClassVar[bool] = True

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0):
        """A freshly initialised torch.nn.Module mapping inputs to `output_dim` outputs; dropout > 0
        puts dropout layers in (MC dropout needs them)."""
        raise NotImplementedError(f"model {type(self).__name__} has no build")

    def problems(self) -> str | None:
        """None, or a message naming a bad field of the model and what is allowed."""
        return None

    def problems_with(self, task) -> str | None:
        """None, or why this model cannot take `task`'s inputs."""
        return None
