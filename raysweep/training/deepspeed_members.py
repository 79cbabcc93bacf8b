"""Deep-ensemble members trained one after another with DeepSpeed ZeRO, for members too large to stack.

The vectorised engine (raysweep.training.loop) trains M small members as one batched model on one device. A
language model of hundreds of millions of parameters instead needs ZeRO (optimizer state, gradients
and, at stage 3, parameters sharded over workers) and bf16: this engine trains each member with
DeepSpeed across every process of the current torch.distributed group (Ray Train starts one process
per worker and sets the group up; without Ray a one-process group is made here), each member from its
own initialisation and data order, then keeps the full member weights for prediction.

Prediction streams: `predict` runs one batch through the members and returns that batch's (S, B, T, V)
probabilities; evaluate.py reduces them to per-token scalars before the next batch, so every member's
full-vocabulary probabilities are never held for the whole evaluation set.

Known limits, kept simple on purpose: every worker evaluates the whole evaluation set (correct for
all stages, redundant beyond the first worker); the members must fit on one device for prediction.
"""

from __future__ import annotations

import os
import socket

import torch
from torch import distributed as dist
from torch import nn

from raysweep.training.budget import check_finite, epochs_for, steps_per_epoch
from raysweep.training.likelihood import loss_per_member, to_prediction
from raysweep.training.loop import augmenter


def fit(data, model, options, train, seed: int, on_epoch, device) -> Members:
    """Train options.members members with DeepSpeed; on_epoch gets the mean loss over members per epoch."""
    import deepspeed  # imported here: loading DeepSpeed costs seconds and most sweeps never need it

    join_process_group(device)
    members, losses = [], {}
    for member in range(options.members):
        torch.manual_seed(seed * 1_000 + member)  # own initialisation per member, the same on every worker
        network = model.build(data.input_dim, data.output_dim)
        engine = make_engine(deepspeed, network, options.zero_stage, train, device)
        for epoch, loss in _train(engine, data, train, seed * 1_000 + member, device):
            losses.setdefault(epoch, []).append(loss)
        members.append(_full_network(deepspeed, engine, lambda: model.build(data.input_dim, data.output_dim),
                                     options.zero_stage, device))
        del engine  # frees this member's optimizer state before the next member starts
    for epoch, values in sorted(losses.items()):
        on_epoch(epoch, sum(values) / len(values))
    return Members(members, data.kind)


class Members:
    """An ensemble held as M separate networks (each too large to stack); predicts with all of them."""

    def __init__(self, networks: list[nn.Module], kind: str):
        self.networks, self.kind = networks, kind
        self.device = next(networks[0].parameters()).device

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        inputs = x.to(self.device)
        outputs = torch.stack([network(_cast(inputs, network)).float() for network in self.networks])
        return to_prediction(outputs.to(x.device), self.kind)  # (M, B, …, C), or Gaussian means/variances


# ---------------------------------------------------------------------------------------------

def deepspeed_config(zero_stage: int, micro_batch: int, device) -> dict:
    """bf16 on a GPU (the tensor cores' format, no loss scaling needed), fp32 on a CPU (no bf16 kernels
    worth using there). One micro-batch per step: the global batch is micro_batch × workers."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": torch.device(device).type == "cuda"},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,  # raysweep reports its own progress
        "wall_clock_breakdown": False,
    }


def join_process_group(device) -> None:
    """Use the process group Ray Train made; outside Ray, make a one-process group on a free port."""
    if dist.is_available() and dist.is_initialized():
        return
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def make_engine(deepspeed, network: nn.Module, zero_stage: int, train, device):
    workers = dist.get_world_size()
    micro_batch = -(-train.batch_size // workers)  # ceil: the global batch is at least train.batch_size
    network = network.to(device)
    # A torch optimizer rather than DeepSpeed's own "Adam" type: DeepSpeed's fused CPU/GPU Adam kernels
    # are compiled on first use (minutes); torch's AdamW (fused on CUDA) is as fast for these sizes.
    optimizer = torch.optim.AdamW(network.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                  fused=torch.device(device).type == "cuda")
    engine, *_ = deepspeed.initialize(model=network, optimizer=optimizer,
                                      config=deepspeed_config(zero_stage, micro_batch, device))
    return engine


def _train(engine, data, train, seed: int, device):
    """Yield (epoch, mean loss over every worker) after each pass; each worker takes its slice of every
    global batch, so W workers together see exactly the batches one process would."""
    rank, workers = dist.get_rank(), dist.get_world_size()
    x, y = data.train_x, data.train_y
    n, batch, steps = len(x), min(train.batch_size, len(x)), steps_per_epoch(train, len(x))
    generator = torch.Generator().manual_seed(seed)  # the same order on every worker
    augment = augmenter(data, seed + rank)  # each worker crops and flips its own slice
    for epoch in range(1, epochs_for(train, n) + 1):
        order = torch.randperm(n, generator=generator)
        total = torch.zeros((), device=device)
        for step in range(steps):
            mine = order[step * batch:(step + 1) * batch][rank::workers]
            inputs, targets = augment(x[mine]).to(device), y[mine].to(device)
            outputs = engine(_cast(inputs, engine.module)).float()
            loss = loss_per_member(outputs.unsqueeze(0), targets.unsqueeze(0), data.kind)[0]
            engine.backward(loss)
            engine.step()
            total += loss.detach()
        dist.all_reduce(total)
        epoch_loss = total.item() / (workers * steps)
        check_finite(epoch, epoch_loss)
        yield epoch, epoch_loss


def _full_network(deepspeed, engine, build, zero_stage: int, device) -> nn.Module:
    """The trained member with all its weights on this worker, for prediction. At ZeRO-3 each worker
    holds a shard of every parameter: gather them (a collective, so every worker calls it) into a
    fresh copy of the architecture."""
    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            state = {name: value.detach().clone() for name, value in engine.module.state_dict().items()}
        full = build()
        full.load_state_dict(state, assign=True)
    else:
        full = engine.module
    return full.to(device).eval()


def _cast(inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """Real-valued inputs follow the network's dtype (bf16 under DeepSpeed on a GPU); token ids stay ints."""
    dtype = next(network.parameters()).dtype
    return inputs.to(dtype) if inputs.is_floating_point() else inputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
