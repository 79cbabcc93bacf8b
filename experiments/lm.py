"""The flagship: how the uncertainty of small GPT-2 language models scales with tokens and width.

Local default (CPU; 72 cells, 3 seeds, converged budgets): byte-level modelling of CPython's English
documentation (i.i.d. test windows), OOD = CPython's standard-library code without docstrings or
comments ("python_code") and as it is ("python_source"), GPT-2 models of three widths, 4-member deep
ensembles and MC dropout. Measured on a loaded 2-core machine: one ensemble cell at N = 8,192 tokens
took 5 minutes and reached its 30-epoch cap; OOD AUROC by EU 0.63 (python_code) and 0.60
(python_source). The byte-level LM does not show the laws within minutes; algorithmic.py (a + b mod
97, the paper's GPT-2 setting) is the language task to run locally for them.

Full scale (a GPU cluster; RAYSWEEP_SCALE=full): ensemble members trained with DeepSpeed ZeRO-2 in
bf16 on Ray Train workers, TinyStories with the GPT-2 tokenizer, N from 2^22 to
2^30 tokens (9 values) x 6 widths x 2 methods x 3 seeds = 324 cells. Each cell reports its own
parameter count P, so the report fits laws in N at each width and in P at each N.
"""

import os
from dataclasses import replace

from raysweep import Eval, Experiment, Grid, MethodOptions, Resources, Train
from raysweep.methods import dropout, ensemble
from raysweep.models.gpt import GPT
from raysweep.tasks.text import Text

local = Experiment(
    name="lm",
    task=Text(source="pydoc", context=64),
    model=GPT(n_embd=64, n_layer=2, head_dim=16),
    grid=Grid(
        n=(8_192, 16_384, 32_768, 65_536),  # training tokens
        sizes=(16, 32, 64),  # n_embd
        methods=("ensemble", "dropout"),
        seeds=(0, 1, 2),
        ood=("python_code", "python_source"),
    ),
    # Every cell trains until the loss on its validation split (10% of its N tokens) stops improving.
    train=Train(epochs=1, min_steps=60, batch_size=32, lr=3e-3, until="converged", val_fraction=0.1,
                patience_steps=40, max_epochs=30),
    eval=Eval(max_examples=8_192),  # tokens per evaluation set
    methods=MethodOptions(ensemble=ensemble.Options(members=4), dropout=dropout.Options(rate=0.1, samples=8)),
)

full = replace(
    local,
    task=Text(source="hf:roneneldan/TinyStories", tokenizer="gpt2", context=512),
    # Members one at a time with DeepSpeed ZeRO-2 in bf16 (benchmarks/RESULTS-deepspeed.md), so the
    # fused SDPA attention replaces the eager one that only the vectorised engine needs.
    model=GPT(n_embd=768, n_layer=12, head_dim=64, attention="sdpa"),
    grid=replace(local.grid, n=tuple(2**k for k in range(22, 31)), sizes=(128, 256, 384, 512, 768, 1024),
                 seeds=(0, 1, 2)),
    train=Train(epochs=1, min_steps=2_000, batch_size=32, lr=6e-4),  # fixed: DeepSpeed members have no early stopping
    eval=Eval(max_examples=1_000_000),
    resources=Resources(cpus=8, gpus=1),
    methods=replace(local.methods, ensemble=ensemble.Options(members=4, engine="deepspeed", zero_stage=2)),
)

experiment = full if os.environ.get("RAYSWEEP_SCALE") == "full" else local
