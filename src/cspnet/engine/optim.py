"""Optimizers and the learning-rate schedule: linear warm-up, then a cosine decay, per step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import OptionError

OPTIMIZERS = ("auto", "sgd", "adamw")
# A short run (up to this many optimizer steps) fits best with AdamW and without random crops; a long
# one generalises better with SGD and crops (benchmarks/small_data.md). "auto" settles both by it.
AUTO_SGD_FROM_STEPS = 10_000
# learning rate for a global batch of 256, scaled with the batch: linearly for SGD (Goyal et al.,
# 2017), by the square root for AdamW (its steps are normalised; timm scales Adam-family rates so
# too). AdamW's base is the best of benchmarks/small_data.md's rate x schedule table on three small
# sets (2.8e-3 at batch 32, 4e-3 at 64)
BASE_LR = {"sgd": 0.2, "adamw": 8e-3}
LR_SCALING = {"sgd": "linear", "adamw": "sqrt"}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise OptionError(f"{{optimizer}} is not allowed; choose one of {', '.join(OPTIMIZERS)}", optimizer=name)
    return name


def short_run(total_steps: int) -> bool:
    return total_steps <= AUTO_SGD_FROM_STEPS


def auto_optimizer(total_steps: int) -> str:
    """What ``"auto"`` means for a run of ``total_steps`` optimizer steps."""
    return "adamw" if short_run(total_steps) else "sgd"


def default_lr(optimizer: str, batch_size: int) -> float:
    ratio = batch_size / 256
    return BASE_LR[optimizer] * (ratio if LR_SCALING[optimizer] == "linear" else math.sqrt(ratio))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (every parameter with fewer than 2 dims)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    groups = param_groups(model, weight_decay)
    if check_optimizer(name) == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


class WarmupCosine:
    """lr factor at ``step``: linear from ``warmup_start`` to 1 over ``warmup`` steps, then a half
    cosine down to ``final`` at ``total``. A plain object so LambdaLR saves it in its state."""

    def __init__(self, total: int, warmup: int, warmup_start: float = 0.01, final: float = 0.0):
        self.total, self.warmup = max(1, total), max(0, min(warmup, total))
        self.warmup_start, self.final = warmup_start, final

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_start + (1 - self.warmup_start) * step / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
