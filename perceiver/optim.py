"""LAMB optimizer with decay-exempt parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def exempt_from_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is trained without weight decay.

    Vectors (biases, LayerNorm gains and shifts) and the Perceiver's learned
    latent array and modality embeddings are exempt: shrinking them towards
    zero does not regularise the mapping, it only erases learned offsets,
    scales and query/position codes.
    """
    return param.ndim < 2 or name.endswith("latents") or "modality" in name


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """timm's LAMB over the model's trainable parameters, in a decayed and an exempt group.

    timm's LAMB skips the layer-wise trust ratio in a group whose weight decay
    is 0, so the exempt group gets plain Adam updates, as in the LAMB paper's
    exclusion of biases and norms from layer adaptation; the same rule means
    ``weight_decay=0`` turns the whole optimizer into Adam. timm's built-in
    gradient-norm clipping is off: the training loop clips once, at
    ``train.grad_clip``, where the config says. Empty groups are left out.
    """
    # Imported here: timm loads its model zoo and torchvision (about 2.5 s), which the job's driver,
    # importing this module with the worker loop, has no use for.
    from timm.optim import Lamb

    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if exempt_from_weight_decay(name, param) else decay).append(param)
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0))
        if params
    ]
    return Lamb(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=None)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier on the base learning rate at scheduler step ``step``.

    Warm-up is ``(step + 1) / (warmup_steps + 1)`` rather than
    ``step / warmup_steps`` so the very first optimizer step does not run at
    a learning rate of exactly 0; it reaches 1 at ``warmup_steps``. Past
    ``total_steps`` the factor stays at 0.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warm-up to the optimizer's lr over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Call ``scheduler.step()`` once per optimizer step. The factor function is
    a closure, which ``LambdaLR.state_dict`` does not store; resume by
    building the scheduler with the same arguments and loading its state dict.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps; got {warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps)

    return LambdaLR(optimizer, factor)
