"""The layers a detector's feature pyramid is made of: spatial pyramid pooling, Maxout channel
compression, darknet's spatial attention, and nearest-neighbour upsampling, each as darknet computes
it (``../shared/reference/architectures.md`` 5.1, 5.6, 5.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvBnAct
from .pooling import DarknetMaxPool


class SpatialPyramidPool(nn.Module):
    """Max-pools of several sizes at stride 1 ("same" padding, out-of-image taps ignored), concatenated
    with the input as darknet's ``[route] layers=-1,-3,-5,-6`` writes it: ``[mp13, mp9, mp5, x]``
    (YOLOv3-SPP; ``csresnext50-panet-spp.cfg`` layers 84-89). Output: ``(len(sizes) + 1) * C``."""

    def __init__(self, sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        if not sizes or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"spp sizes={sizes!r} must be odd pool sizes, e.g. (5, 9, 13)")
        self.pools = nn.ModuleList(DarknetMaxPool(k, 1) for k in sizes)

    def forward(self, x):
        return torch.cat([pool(x) for pool in reversed(self.pools)] + [x], dim=1)


class Maxout(nn.Module):
    """Cross-channel max over groups of ``groups`` consecutive channels (Goodfellow et al. 2013):
    ``C -> C / groups`` at no parameter cost; darknet's ``[maxpool] maxpool_depth=1``, which the EFM
    applies to each feature before concatenating the pyramid (CSPNet issue #1)."""

    def __init__(self, groups: int = 2):
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"maxout groups={groups!r} must be a positive integer")
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f"maxout over groups of {self.groups} needs a channel count divisible by it, not {c}")
        return x.view(b, c // self.groups, self.groups, h, w).amax(dim=2)

    def extra_repr(self):
        return f"groups={self.groups}"


class SpatialAttention(nn.Module):
    """darknet's ``[sam]`` (YOLOv4's modified SAM): ``x * sigmoid(BN(conv1x1(x)))``, a point-wise
    attention map with as many channels as ``x`` (architectures.md 5.8)."""

    def __init__(self, chs: int):
        super().__init__()
        self.gate = ConvBnAct(chs, chs, 1, act="logistic")
        self.out_chs = chs

    def forward(self, x):
        return x * self.gate(x)


class Upsample2x(nn.Module):
    """darknet's ``[upsample] stride=2``: nearest neighbour, each pixel repeated 2 x 2."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")
