"""How far apart two model outputs are: the check every inference rewrite, export and engine must
pass against eager PyTorch."""

from __future__ import annotations

import torch


def flatten_outputs(out) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output: a tensor, a list/tuple, or a dict."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    return []


def max_difference(out, ref) -> float:
    """Largest absolute difference between two model outputs, divided by the reference's largest
    magnitude when that exceeds 1 (so untrained models with huge logits are judged fairly)."""
    a, b = flatten_outputs(out), flatten_outputs(ref)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if y.numel() == 0:
            continue
        y = y.detach().float()
        diff = (x.detach().float() - y).abs().max().item()
        worst = max(worst, diff / max(1.0, y.abs().max().item()))
    return worst
