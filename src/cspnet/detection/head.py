"""The convolutions of a YOLO output: an optional 3x3 conv, then the 1x1 linear prediction with a
bias, ``A * (5 + C)`` channels laid out as darknet's ``[yolo]`` reads them (architectures.md 5.4)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import ConvBnAct
from .yolo_decode import YoloHead


class OutputConv(nn.Module):
    """``conv`` (3x3 to ``mid_chs``; none when ``mid_chs`` is None, as in the PRN heads) and ``pred``."""

    def __init__(self, in_chs: int, mid_chs: int | None, head: YoloHead, act: str = "leaky"):
        super().__init__()
        self.conv = ConvBnAct(in_chs, mid_chs, 3, act=act) if mid_chs else nn.Identity()
        self.pred = nn.Conv2d(mid_chs or in_chs, head.num_anchors * (5 + head.num_classes), 1)
        self.head = head

    def forward(self, x):
        return self.pred(self.conv(x))

    @torch.no_grad()
    def init_prior(self, stride: int, img_size: int, objects: float = 8.0) -> None:
        """Start objectness at about ``objects`` objects per image and class scores at 1/C, so the first
        steps are not swamped by the loss of every empty cell (the YOLOv5/RetinaNet prior init)."""
        a, c = self.head.num_anchors, self.head.num_classes
        bias = self.pred.bias.view(a, 5 + c)
        bias[:, 4] = math.log(objects / (img_size / stride) ** 2)
        bias[:, 5:] = math.log(0.6 / max(c - 0.99, 1))
