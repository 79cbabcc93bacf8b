"""LoRA fine-tuning of a pretrained language model (Hu et al., 2021) through `peft`.

    LoRA(pretrained="gpt2", rank=8, alpha=16, target_modules=("c_attn",), head="classification")

`pretrained` is any `from_pretrained` name (needs the hub) or a local folder. The pretrained weights
are frozen; `peft.get_peft_model` adds rank-`rank` adapters B·A (scaled by alpha/rank) to the
`target_modules`, and only those adapters train, plus, for head="classification", the freshly
initialised classification head (AutoModelForSequenceClassification: GPT-2's `score`).

head="classification": inputs are token ids (B, L) right-padded with PAD (-1, "no token", as
raysweep.tasks.text_classification writes them); the attention mask is `ids != PAD`, so padded
positions are never attended to, and the logits are those of the last real token by that mask (not by
the model's pad id, which a real token may share). Outputs (B, C).
head="lm": next-token logits (B, T, V) for the `text` task.

P, the size reported for a cell, is the number of TRAINABLE parameters (LoRA matrices and the head):
the frozen base is not part of P. The size knob is the rank.

stackable = False: M members of an ensemble are M adapters trained one after another on one frozen
base (raysweep.training.adapters), not M stacked copies of the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from raysweep.models.base import Model

HEADS = ("classification", "lm")
PAD = -1  # a padded position of the input ids: no token (see raysweep.tasks.text_classification)
# Dropout settings of common configs: all set to the `dropout` build argument (0 unless MC dropout),
# because pretrained GPT-2 configs ship with 0.1 and a point estimate should not train with it.
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout",
                  "attention_dropout", "hidden_dropout", "classifier_dropout")
HEAD_NAMES = ("score", "classifier")  # the classification head of AutoModelForSequenceClassification models


@dataclass(frozen=True)
class LoRA(Model):
    pretrained: str = ""  # from_pretrained name or local folder (required)
    rank: int = 8
    alpha: float = 16.0  # LoRA scaling alpha / rank
    target_modules: tuple[str, ...] = ("c_attn",)  # GPT-2's fused q, k, v projection
    lora_dropout: float = 0.0
    head: str = "classification"  # "classification" (text_classification task) or "lm" (text task)
    size_knob: ClassVar[str] = "rank"
    stackable: ClassVar[bool] = False

    def problems(self) -> str | None:
        if not self.pretrained:
            return "model.pretrained must name a pretrained model (a from_pretrained name or a local folder)"
        if self.rank <= 0:
            return f"model.rank must be > 0, got {self.rank}"
        if not self.alpha > 0:
            return f"model.alpha must be > 0, got {self.alpha}"
        if not self.target_modules:
            return "model.target_modules must name at least one module, e.g. ('c_attn',)"
        if not 0 <= self.lora_dropout < 1:
            return f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}"
        if self.head not in HEADS:
            return f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}"
        return None

    def problems_with(self, task) -> str | None:
        from raysweep.tasks.text import Text
        from raysweep.tasks.text_classification import TextClassification

        wanted = TextClassification if self.head == "classification" else Text
        if not isinstance(task, wanted):
            return (f"model lora with head={self.head!r} needs a {wanted.__name__} task, got {type(task).__name__} "
                    f"(head 'classification' takes text_classification, head 'lm' takes text)")
        return self._vocabulary_problem(task)

    def _vocabulary_problem(self, task) -> str | None:
        """The task's token ids must index the model's embedding (and, for head 'lm', be its output
        vocabulary). Checked from local files only (a folder or the hub cache: no download, no retries);
        a model or tokenizer not on this machine is left to the cell, whose loading names what is missing."""
        from transformers import AutoConfig, AutoTokenizer

        from raysweep.tasks.text import BYTE_VOCAB

        model_vocab = _readable(lambda: AutoConfig.from_pretrained(self.pretrained, local_files_only=True).vocab_size)
        task_vocab = (_readable(lambda: len(AutoTokenizer.from_pretrained(task.tokenizer, local_files_only=True)))
                      if task.tokenizer else BYTE_VOCAB)
        if model_vocab is None or task_vocab is None:
            return None
        source = f"tokenizer {task.tokenizer!r}" if task.tokenizer else "raw bytes (tokenizer='')"
        if task_vocab > model_vocab or (self.head == "lm" and task_vocab != model_vocab):
            relation = "at most" if self.head == "classification" else "exactly"
            return (f"task {source} gives a vocabulary of {task_vocab} but pretrained model {self.pretrained!r} has "
                    f"{model_vocab}; head {self.head!r} needs {relation} {model_vocab} (use the model's own tokenizer)")
        return None

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> LoRANetwork:
        """input_dim: tokens per input; output_dim: classes (classification) or vocabulary (lm)."""
        import peft

        base = self._base(input_dim, output_dim, dropout)
        config = peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
                                 lora_dropout=self.lora_dropout,
                                 # GPT-2 stores its projections as Conv1D (in, out): peft must transpose
                                 fan_in_fan_out=base.config.model_type == "gpt2")
        network = peft.get_peft_model(base, config)  # freezes every base parameter
        head = _classification_head(network.base_model.model) if self.head == "classification" else None
        if head is not None:
            head.requires_grad_(True)  # a new head trains with the adapters
        return LoRANetwork(network, head, self.head, _pad_id(base.config))

    def _base(self, input_dim: int, output_dim: int, dropout: float) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(self.pretrained)
        for name in DROPOUT_FIELDS:
            if hasattr(config, name):
                setattr(config, name, dropout)
        config.pad_token_id = _pad_id(config)
        context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if context is not None and context < input_dim:
            raise ValueError(f"pretrained model {self.pretrained!r} has context {context}; the task needs {input_dim}")
        auto = AutoModelForSequenceClassification if self.head == "classification" else AutoModelForCausalLM
        if self.head == "classification":
            config.num_labels = output_dim
        elif config.vocab_size != output_dim:
            raise ValueError(f"pretrained model {self.pretrained!r} has vocabulary {config.vocab_size}; the task's "
                             f"tokenizer gives {output_dim} (use the model's own tokenizer)")
        if torch.get_default_device().type == "meta":
            # Counting parameters or checking structure: the config is enough (from_pretrained refuses meta).
            return auto.from_config(config)
        return auto.from_pretrained(self.pretrained, config=config)


class LoRANetwork(nn.Module):
    """token ids -> logits of a peft-wrapped model; hides the HF output object and the padding."""

    def __init__(self, peft_model: nn.Module, head: nn.Module | None, kind: str, pad_id: int):
        super().__init__()
        self.peft_model, self.head, self.kind, self.pad_id = peft_model, head, kind, pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD
        # Padded positions get the model's pad id (any valid id would do: the mask keeps them out of attention).
        inputs = torch.where(mask, ids, torch.full_like(ids, self.pad_id))
        if self.head is None:
            return self.peft_model(input_ids=inputs, attention_mask=mask.long(), use_cache=False).logits
        seen = []
        handle = self.head.register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            pooled = self.peft_model(input_ids=inputs, attention_mask=mask.long(), use_cache=False).logits
        finally:
            handle.remove()
        if seen[-1].dim() != 3:  # the model pools before its head (e.g. BERT's first token): its logits stand
            return pooled
        # A last-token classifier (GPT-2, Llama) pools at the last id that is not the pad id, which skips a
        # real token sharing that id (id 0, "!" in GPT-2's vocabulary, when a config has no pad or eos id):
        # pool its per-position logits at the last real token by the mask instead.
        last = (torch.arange(ids.shape[1], device=ids.device) * mask).argmax(-1)  # (B,)
        return seen[-1][torch.arange(len(ids), device=ids.device), last]  # (B, C)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters that train (adapters and head), by name: what an ensemble member or a
        Laplace posterior is made of."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def reset_trainable(self, seed: int) -> None:
        """Draw fresh adapters (A random, B = 0, peft's own initialisation) and a fresh head, fixed by
        the seed: the next ensemble member starts here, on the same frozen base."""
        from peft.tuners.lora import LoraLayer

        torch.manual_seed(seed)
        for module in self.peft_model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.lora_A:
                    module.reset_lora_parameters(adapter, True)
        if self.head is not None:
            std = getattr(self.peft_model.base_model.model.config, "initializer_range", 0.02)
            for p in self.head.parameters():
                nn.init.normal_(p, std=std) if p.dim() > 1 else nn.init.zeros_(p)


def _classification_head(model: nn.Module) -> nn.Module:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no classification head named one of {', '.join(HEAD_NAMES)}")


def _pad_id(config) -> int:
    """The model's pad id, else its end-of-text id (GPT-2 has no pad token), else 0; an id outside the
    vocabulary (a small model keeping GPT-2's default 50256) does not count."""
    for value in (config.pad_token_id, config.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None and 0 <= int(value) < config.vocab_size:
            return int(value)
    return 0


def _readable(load):
    """load(), or None where it cannot be read here (e.g. a hub name on a machine without the hub)."""
    try:
        return load()
    except (OSError, ValueError):
        return None
