"""Pooling with darknet's padding rules and the classifier head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


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
