"""The 7x7 stem of ResNet/DenseNet, in darknet's and torchvision's form."""

from __future__ import annotations

from torch import nn

from .conv import ConvBnAct
from .pooling import DarknetMaxPool


class ConvPoolStem(nn.Sequential):
    """7x7/2 conv -> BN -> act, then a stride-2 max-pool (overall stride 4).

    ``kind="darknet"``: darknet's 2x2/2 max-pool (``resnet50.cfg`` layer 1);
    ``kind="torchvision"``: the 3x3/2 pad-1 max-pool of torchvision and timm.
    """

    def __init__(self, in_chans: int, chs: int, kind: str = "darknet", act: str = "leaky"):
        if kind not in ("darknet", "torchvision"):
            raise ValueError(f"stem={kind!r} is not allowed; choose 'darknet' or 'torchvision'")
        super().__init__()
        self.conv = ConvBnAct(in_chans, chs, 7, 2, act=act)
        self.pool = DarknetMaxPool(2, 2) if kind == "darknet" else nn.MaxPool2d(3, 2, 1)
        self.out_chs = chs


class PoolConv(nn.Sequential):
    """2x2/2 max-pool then a 3x3 conv: one stage of the Darknet Reference model (``darknet.cfg``),
    and the second half of the "Ref." backbones' stem."""

    def __init__(self, in_chs: int, out_chs: int, act: str):
        super().__init__()
        self.pool = DarknetMaxPool(2, 2)
        self.conv = ConvBnAct(in_chs, out_chs, 3, act=act)
        self.out_chs = out_chs
