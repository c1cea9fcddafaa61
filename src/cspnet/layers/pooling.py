"""Pooling with darknet's padding rules and the classifier head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fastpath import eager_inference


def _pad_to_even(x: torch.Tensor, value: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2), value=value) if h % 2 or w % 2 else x


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 2, 2, ceil_mode=True)`` as the maximum of four strided views: the same
    values, about 8x faster in eager NCHW on this CPU (no indices are computed). Inference only:
    its gradient would split ties between the views."""
    x = _pad_to_even(x, float("-inf"))
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., ::2, 1::2]),
                         torch.maximum(x[..., 1::2, ::2], x[..., 1::2, 1::2]))


class AvgPool2x2(nn.Module):
    """2x2/2 average pool (``AvgPool2d(2, 2, ceil_mode=...)``); in eager inference on even sizes
    it is the mean of four strided views, several times faster in NCHW."""

    def __init__(self, ceil_mode: bool = False):
        super().__init__()
        self.ceil_mode = ceil_mode

    def forward(self, x):
        h, w = x.shape[-2:]
        odd = bool(h % 2 or w % 2)
        if eager_inference() and not odd:
            return (x[..., ::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, ::2] + x[..., 1::2, 1::2]) * 0.25
        # ceil_mode only matters on odd sizes; without it oneDNN Graph fuses the pool with its neighbours
        return F.avg_pool2d(x, 2, 2, ceil_mode=self.ceil_mode and odd)

    def extra_repr(self):
        return f"ceil_mode={self.ceil_mode}"


class DarknetMaxPool(nn.Module):
    """darknet ``[maxpool]``: output size ceil(H / stride), out-of-image taps ignored.

    Size 2 stride 2 is ``MaxPool2d(2, 2, ceil_mode=True)``; size 2 stride 1 pads right/bottom
    (yolov3-tiny's last pool); odd sizes with stride 1 are 'same' pools (SPP).
    """

    def __init__(self, size: int = 2, stride: int = 2):
        super().__init__()
        self.size, self.stride = size, stride

    def forward(self, x):
        s, t = self.size, self.stride
        if s == 2 and t == 2:  # the common case: no explicit padding needed
            if eager_inference():
                return max_pool_2x2(x)
            return F.max_pool2d(x, 2, 2, ceil_mode=True)
        pad = s - 1  # darknet's default total padding; the window starts at -(s-1)//2
        left = pad // 2
        if pad:
            x = F.pad(x, (left, pad - left, left, pad - left), value=float("-inf"))
        return F.max_pool2d(x, s, t)

    def extra_repr(self):
        return f"size={self.size}, stride={self.stride}"


class ClassifierHead(nn.Module):
    """Global average pool + fully connected layer (a darknet 1x1 conv with bias).

    ``fc_first=True`` applies the 1x1 classifier conv at full resolution and pools afterwards, as
    ``resnet50.cfg`` and ``densenet201.cfg`` do. The outputs are identical; only the FLOPs differ,
    which is why the cfg's BFLOPs count it (9.999 vs 9.74 for resnet50).
    """

    def __init__(self, in_chs: int, num_classes: int, fc_first: bool = False, drop_rate: float = 0.0):
        super().__init__()
        self.in_chs, self.num_classes, self.fc_first = in_chs, num_classes, fc_first
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.fc = self._make_fc(in_chs, num_classes)

    def _make_fc(self, in_chs, num_classes):
        if num_classes <= 0:
            return nn.Identity()
        if self.fc_first:
            return nn.Conv2d(in_chs, num_classes, 1, bias=True)
        return nn.Linear(in_chs, num_classes)

    def reset(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = self._make_fc(self.in_chs, num_classes)

    def forward(self, x, pre_logits: bool = False):
        if self.fc_first and not pre_logits and self.num_classes > 0:
            return self.fc(self.drop(x)).mean((2, 3))
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)
