"""GPT-2-family causal language models built from `transformers` configs, with a width knob.

Size: n_embd is the knob; heads follow from head_dim, and n_layer is set per experiment (scale it
too by giving one experiment per depth). `pretrained` loads weights instead, for fine-tuning studies:
any `from_pretrained` name (needs the hub) or a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from raysweep.models.base import Model

ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True)
class GPT(Model):
    n_embd: int = 128
    n_layer: int = 2
    head_dim: int = 32
    pretrained: str = ""  # a from_pretrained name or local folder; empty = random init from the config
    # "eager": plain matmuls that vmap batches (the vectorised ensembles need it; SDPA has no batching
    # rule and falls back to a slow per-member loop); "sdpa": PyTorch's fused attention, for members
    # trained one at a time (MC dropout, DeepSpeed ensemble members), much faster on a GPU.
    attention: str = "eager"
    size_knob: ClassVar[str] = "n_embd"

    def problems(self) -> str | None:
        if self.n_embd <= 0 or self.n_layer <= 0 or self.head_dim <= 0:
            return f"model.n_embd, n_layer and head_dim must be > 0, got {self.n_embd}, {self.n_layer}, {self.head_dim}"
        if self.n_embd % self.head_dim:
            return f"model.n_embd ({self.n_embd}) must be a multiple of model.head_dim ({self.head_dim})"
        if self.attention not in ATTENTION:
            return f"model.attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}"
        return None

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        """input_dim: the context length (tokens per sequence); output_dim: the vocabulary size."""
        from transformers import GPT2Config, GPT2LMHeadModel

        if self.pretrained and torch.get_default_device().type == "meta":
            # Counting parameters or checking structure (nothing is allocated): the config is enough, and
            # from_pretrained refuses to run on the meta device.
            model = GPT2LMHeadModel(GPT2Config.from_pretrained(self.pretrained, tie_word_embeddings=False,
                                                               resid_pdrop=dropout, embd_pdrop=dropout,
                                                               attn_pdrop=dropout, attn_implementation=self.attention))
        elif self.pretrained:
            model = GPT2LMHeadModel.from_pretrained(self.pretrained, resid_pdrop=dropout, embd_pdrop=dropout,
                                                    attn_pdrop=dropout, attn_implementation=self.attention)
            _untie_output_embedding(model)
            if model.config.n_positions < input_dim or model.config.vocab_size != output_dim:
                raise ValueError(
                    f"pretrained model {self.pretrained!r} has context {model.config.n_positions} and vocabulary "
                    f"{model.config.vocab_size}; the task needs context >= {input_dim} and vocabulary {output_dim}")
        else:
            config = GPT2Config(vocab_size=output_dim, n_positions=input_dim, n_embd=self.n_embd,
                                n_layer=self.n_layer, n_head=self.n_embd // self.head_dim,
                                resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                # Untied input/output embeddings: torch.func's stacked (vmap) training
                                # of ensemble members cannot follow a parameter shared by two modules.
                                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                                attn_implementation=self.attention)
            model = GPT2LMHeadModel(config)
        return CausalLM(model)


class CausalLM(nn.Module):
    """token ids (B, T) -> next-token logits (B, T, V); hides the HF output object."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def _untie_output_embedding(model: nn.Module) -> None:
    """Give the output layer its own copy of the input embedding (see the config note in build)."""
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
    model.config.tie_word_embeddings = False
