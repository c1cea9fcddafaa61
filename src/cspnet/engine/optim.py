"""Optimizers and the learning-rate schedule: linear warm-up, then a cosine decay, per step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import OptionError

OPTIMIZERS = ("sgd", "adamw")
# learning rate for a global batch of 256; scaled linearly with the batch (Goyal et al., 2017)
BASE_LR = {"sgd": 0.2, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise OptionError(f"{{optimizer}} is not allowed; choose one of {', '.join(OPTIMIZERS)}", optimizer=name)
    return name


def default_lr(optimizer: str, batch_size: int) -> float:
    return BASE_LR[optimizer] * batch_size / 256


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
