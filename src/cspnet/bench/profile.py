"""Parameter and FLOP counts, in the conventions of the paper and of darknet.

GFLOPs = 2 x multiply-adds (darknet's BFLOPs), counted by ``torch.utils.flop_counter`` (convs and
matmuls; pooling, BN and activations are not counted, as in the cfg INDEX cross-check).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.spec import input_channels


@dataclass(frozen=True)
class Profile:
    params: int  # every parameter
    weights: int  # conv/linear weights only (the CSPNet README convention)
    macs: int
    img_size: tuple[int, int]

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, conv/linear weights only)."""
    total = sum(p.numel() for p in model.parameters())
    weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))
    )
    return total, weights


def _size(img_size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def count_macs(model: nn.Module, img_size=256, in_chans: int | None = None) -> int:
    """Multiply-adds of one forward pass of a batch of 1, run on the meta device (no compute)."""
    h, w = _size(img_size)
    if in_chans is None:
        in_chans = input_channels(model)
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    meta.eval()
    x = torch.empty(1, in_chans, h, w, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() // 2


def _on_meta(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "meta"


def profile(model: nn.Module, img_size=256, in_chans: int | None = None) -> Profile:
    total, weights = count_params(model)
    return Profile(total, weights, count_macs(model, img_size, in_chans), _size(img_size))
