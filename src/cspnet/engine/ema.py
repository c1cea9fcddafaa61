"""Exponential moving average of a model's weights (Polyak averaging), the weights evaluated and
saved when ``--ema`` is on."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step, for every floating-point
    entry of the state dict (BatchNorm statistics included).

    ``d`` ramps up as ``min(decay, (1 + n) / (10 + n))`` with ``n`` the updates so far, so that short
    runs are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must lie strictly between 0 and 1")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        self.updates += 1
        src = model.state_dict()
        for name, ema in self.module.state_dict().items():
            if ema.is_floating_point():
                ema.lerp_(src[name].detach(), weight)
            else:
                ema.copy_(src[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["module"])
