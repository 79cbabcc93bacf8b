"""DeepSpeed ensemble members on one GPU: the lm smoke cell end to end in bf16, then training throughput
(tokens/s) and model-FLOPs utilisation of GPT-2 members of growing size.

    python benchmarks/deepspeed_gpu.py --out results.json        # needs a CUDA GPU

MFU = achieved model FLOP/s / the GPU's dense bf16 peak. Model FLOPs per token (PaLM, appendix B):
6·P for the weights' forward and backward plus 12·L·T·d for attention scores, P counting every
parameter except the position embedding. Timed: `--steps` optimiser steps after `--warmup` steps,
torch.cuda.synchronize() around the timed span. Members are trained by raysweep's own DeepSpeed
engine (`raysweep.training.deepspeed_members.make_engine`), as a sweep trains them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from raysweep import experiment as E
from raysweep.cell import run_cell
from raysweep.experiment import Train
from raysweep.models.gpt import GPT
from raysweep.training import deepspeed_members
from raysweep.training.likelihood import loss_per_member

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM datasheets)
VOCAB = 50257  # GPT-2's tokenizer
CONTEXT = 1024
# (name, n_embd, n_layer): the GPT-2 family's shapes.
SIZES = [("gpt2-124M", 768, 12), ("gpt2-350M", 1024, 24), ("gpt2-774M", 1280, 36), ("gpt2-1.5B", 1600, 48)]


def smoke_cell(device: str) -> dict:
    """experiments/lm.py --smoke with DeepSpeed members, run in this process on the GPU."""
    e = E.load("experiments/lm.py")
    e = E.apply_overrides(E.smoke(e), ["grid.methods=ensemble", "methods.ensemble.engine=deepspeed",
                                       "methods.ensemble.zero_stage=2", "model.attention=sdpa"])
    e.validate()
    started = time.time()
    rows = run_cell(E.cells(e)[0], lambda rows: None, device=device)
    return {"seconds": time.time() - started,
            "rows": [{k: row.get(k) for k in ("split", "status", "params", "total", "aleatoric", "epistemic",
                                             "nll", "accuracy", "error")} for row in rows]}


def model_flops_per_token(params: int, n_layer: int, n_embd: int, context: int) -> float:
    return 6 * params + 12 * n_layer * context * n_embd


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(name: str, n_embd: int, n_layer: int, batch: int, zero_stage: int, steps: int, warmup: int,
               peak: float, device: str = "cuda", context: int = CONTEXT, compile: bool = False) -> dict:
    import deepspeed

    deepspeed_members.join_process_group(device)
    torch.manual_seed(0)
    network = GPT(n_embd=n_embd, n_layer=n_layer, head_dim=64, attention="sdpa").build(context, VOCAB)
    params = sum(p.numel() for n, p in network.named_parameters() if "wpe" not in n)
    if compile:  # fuses the many small element-wise kernels of the HF blocks; costs a minute of compiling
        network.compile()
    train = Train(batch_size=batch, lr=3e-4)
    engine = deepspeed_members.make_engine(deepspeed, network, zero_stage, train, device)
    tokens = torch.randint(0, VOCAB, (batch, context + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step(engine):
        loss = loss_per_member(engine(inputs).float().unsqueeze(0), targets.unsqueeze(0), "classification")[0]
        engine.backward(loss)
        engine.step()
        return loss

    for _ in range(warmup):
        step(engine)
    synchronize(device)
    started = time.time()
    for _ in range(steps):
        loss = step(engine)
    synchronize(device)
    seconds = (time.time() - started) / steps
    tokens_per_s = batch * context / seconds
    flops = model_flops_per_token(params, n_layer, n_embd, context) * tokens_per_s
    on_gpu = device == "cuda"
    result = {"model": name, "params": params, "zero_stage": zero_stage, "batch": batch, "context": context,
              "compiled": compile,
              "step_s": seconds, "tokens_per_s": tokens_per_s, "model_tflops": flops / 1e12,
              "mfu": flops / peak, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0,
              "loss": loss.item()}
    del engine, network
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def one_size(args, peak: float, device: str, context: int) -> None:
    """Child process: one size, largest batch (from --batch, halving) that fits; prints one JSON line.
    A fresh process per size: DeepSpeed keeps references that stop a finished engine's memory being freed."""
    name, n_embd, n_layer = next(s for s in SIZES + [("tiny", 64, 2)] if s[0] == args.one)
    batch = args.batch
    while batch >= 1:
        try:
            result = throughput(name, n_embd, n_layer, batch, args.zero_stage, args.steps, args.warmup, peak,
                                device, context, args.compile)
            print("RESULT " + json.dumps(result), flush=True)
            return
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="deepspeed_gpu.json")
    parser.add_argument("--sizes", default=",".join(s[0] for s in SIZES))
    parser.add_argument("--batch", type=int, default=16, help="sequences per step to try first (halved on OOM)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile each member")
    parser.add_argument("--no-smoke", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=240, help="per size")
    parser.add_argument("--dry-run", action="store_true", help="CPU, one tiny size: checks the script itself")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    context = 32 if args.dry_run else CONTEXT
    gpu = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), PEAK_BF16["H100"])
    if args.one:
        return one_size(args, peak, device, context)
    report = {"gpu": gpu, "peak_bf16_flops": peak, "torch": torch.__version__, "sizes": []}
    if not args.no_smoke:
        report["smoke"] = smoke_cell(device)
        print(json.dumps(report["smoke"], indent=1), flush=True)
    for name in ("tiny",) if args.dry_run else args.sizes.split(","):
        child = [sys.executable, __file__, "--one", name] + [a for a in sys.argv[1:] if a != "--no-smoke"]
        try:
            finished = subprocess.run(child, capture_output=True, text=True, timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{name}: no result within {args.timeout_s:.0f} s", flush=True)
            continue
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"{name}: no result (exit {finished.returncode}): {finished.stderr.strip()[-600:]}", flush=True)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        report["sizes"].append(result)
        print(f"{name:>10} P={result['params'] / 1e6:7.1f}M batch {result['batch']:2d}x{context} "
              f"stage {result['zero_stage']}{' compiled' if result['compiled'] else ''}: "
              f"{result['tokens_per_s']:9.0f} tok/s  {result['model_tflops']:6.1f} TFLOP/s  "
              f"MFU {100 * result['mfu']:5.1f}%  peak mem {result['peak_memory_gib']:5.1f} GiB", flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
