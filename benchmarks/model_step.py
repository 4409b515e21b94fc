"""Training-step time and memory of the Perceiver against naive attention.

Three variants of the same model and parameters, chosen through the attributes of its
``Attention`` modules:

* model:    as built: ``scaled_dot_product_attention``, and the cross-attention's key and
            value projections folded onto the latent queries (``Attention.fold_kv``);
* unfolded: SDPA, with keys and values projected over all M input tokens;
* naive:    keys and values projected over all M tokens, and ``naive_attention`` below in
            place of SDPA, which materialises the N x M weights with einsum and softmax as
            a straightforward implementation would.

Memory: each (tokens, variant) runs in a fresh spawned process, so on CPU the peak RSS
growth of that process over its loaded state (model, optimizer, batch) is the memory of its
training step alone; on CUDA it is the growth of max_memory_allocated.
Time: for each size one fresh process builds all three variants and interleaves their steps,
so a change in machine load (other jobs on the same cores) hits every variant alike; the
median of the timed steps is reported.

    python -m benchmarks.model_step                      # from the repo root; CPU, float32
    python -m benchmarks.model_step --device cuda --bf16
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from perceiver import Perceiver, PerceiverConfig
from perceiver.attention import Attention

BATCH, CHANNELS, CLASSES = 2, 256, 527
CONFIG = dict(
    input_channels=CHANNELS,
    num_latents=256,
    latent_dim=512,
    num_blocks=2,
    self_attends_per_block=4,
    cross_heads=1,
    self_heads=8,
    num_classes=CLASSES,
)
VARIANTS = ("model", "unfolded", "naive")
T = TypeVar("T")


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q (B,H,N,E), k (B,H,M,E), v (B,H,M,V), mask (B,1,1,M) -> (B,H,N,V) via the full (B,H,N,M) weights."""
    logits = torch.einsum("bhne,bhme->bhnm", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhnm,bhmv->bhnv", logits.softmax(dim=-1), v)


def build_step(tokens: int, variant: str, device: str, bf16: bool) -> Callable[[], None]:
    """A closure running one AdamW training step of ``variant`` on a fixed random batch."""
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig(**CONFIG)).to(device).train()
    for module in model.modules():
        if isinstance(module, Attention) and variant != "model":
            module.fold_kv = False
            if variant == "naive":
                module.kernel = naive_attention
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = torch.randn(BATCH, tokens, CHANNELS, device=device)
    mask = torch.ones(BATCH, tokens, dtype=torch.bool, device=device)  # what the input module hands over
    targets = (torch.rand(BATCH, CLASSES, device=device) < 0.05).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs, mask)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def added_memory_mib(tokens: int, variant: str, device: str, bf16: bool) -> float:
    """MiB that two training steps add to the loaded process; run it in a fresh process."""
    step = build_step(tokens, variant, device, bf16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    for _ in range(2):  # the first step also creates the optimizer state
        step()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - loaded) / 2**20


def step_seconds(tokens: int, device: str, bf16: bool, warmup: int, steps: int) -> dict[str, float]:
    """Median step seconds per variant (key "load": the 1-minute load average afterwards)."""
    step_of = {v: build_step(tokens, v, device, bf16) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(warmup + steps):
        for variant, step in step_of.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[variant].append(time.perf_counter() - start)
    return {**{v: statistics.median(t) for v, t in times.items()}, "load": os.getloadavg()[0]}


def in_fresh_process(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a newly spawned interpreter, so nothing earlier inflates its memory."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward to bfloat16")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per variant; the median is reported"
    )
    args = parser.parse_args()

    memory = {
        (m, v): in_fresh_process(added_memory_mib, m, v, args.device, args.bf16)
        for m in args.tokens
        for v in VARIANTS
    }
    seconds = {
        m: in_fresh_process(step_seconds, m, args.device, args.bf16, args.warmup, args.steps)
        for m in args.tokens
    }

    what = "peak RSS growth" if args.device == "cpu" else "max_memory_allocated growth"
    print(
        f"device {args.device}, {'bf16 autocast' if args.bf16 else 'float32'}, torch threads "
        f"{torch.get_num_threads()}; B={BATCH} C={CHANNELS} N={CONFIG['num_latents']} D={CONFIG['latent_dim']}, "
        f"{CONFIG['num_blocks']} blocks x {CONFIG['self_attends_per_block']} self-attends, AdamW training step"
    )
    print(
        f"step s: median of {args.steps} interleaved steps after {args.warmup} warm-up; added MiB: {what} "
        "over the loaded process; load: 1-minute load average after the timing"
    )
    header = (
        f"{'tokens':>7} | {'variant':<8} | {'step s':>7} | {'added MiB':>9} | "
        f"{'naive/this time':>15} | {'this/naive mem':>14} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for m in args.tokens:
        for v in VARIANTS:
            print(
                f"{m:>7} | {v:<8} | {seconds[m][v]:>7.3f} | {memory[m, v]:>9.0f} | "
                f"{seconds[m]['naive'] / seconds[m][v]:>14.2f}x | {memory[m, v] / memory[m, 'naive']:>14.2f} | "
                f"{seconds[m]['load']:>5.2f}"
            )
    print("MiB per extra 1,000 tokens (slope of added MiB between sizes):")
    for lo, hi in zip(args.tokens[:-1], args.tokens[1:], strict=True):
        per_k = {v: (memory[hi, v] - memory[lo, v]) / ((hi - lo) / 1000) for v in VARIANTS}
        print(f"  {lo:>6} -> {hi:>6}: " + ", ".join(f"{v} {per_k[v]:.2f}" for v in VARIANTS))


if __name__ == "__main__":
    main()
