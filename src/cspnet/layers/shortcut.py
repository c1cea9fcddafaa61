"""darknet's ``[shortcut]`` when the two tensors differ in shape.

darknet (pjreddie's ``shortcut_cpu``, the version the CSPNet models were trained with) keeps the
shape of the layer before the shortcut and adds the from-layer into its first min(C1, C2) channels,
sampling the from-layer with a spatial stride when it is larger. This partial add appears in
darknet's ResNet-50/ResNeXt-50 (no projection shortcuts), in the first stage of CSPResNe(X)t-50 and
in the PRN heads.
"""

from __future__ import annotations

import torch


def partial_add(x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``x`` plus ``shortcut`` over their common channels; ``x``'s shape is kept."""
    if shortcut.shape == x.shape:
        return x + shortcut
    sh = -(-shortcut.shape[-2] // x.shape[-2])  # ceil: a stride-2 conv maps H to ceil(H / 2)
    sw = -(-shortcut.shape[-1] // x.shape[-1])
    if sh > 1 or sw > 1:
        shortcut = shortcut[..., ::sh, ::sw]
    c = min(x.shape[1], shortcut.shape[1])
    if c == x.shape[1]:
        return x + shortcut[:, :c]
    return torch.cat([x[:, :c] + shortcut[:, :c], x[:, c:]], dim=1)
