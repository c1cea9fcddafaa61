"""Stems and the pool-conv stage of the darknet reference models: the 7x7 stem of ResNet/DenseNet
in darknet's and torchvision's form, and Darknet Ref.'s max-pool + 3x3 conv."""

from __future__ import annotations

from torch import nn

from .activations import make_act
from .conv import ConvBnAct
from .pooling import DarknetMaxPool
from .shortcut import partial_add


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


class PoolConv(nn.Module):
    """2x2 max-pool (stride 2, or 1 as yolov3-tiny's last) then a 3x3 conv: one stage of the Darknet
    Reference model (``darknet.cfg``), of the YOLOv3-tiny backbones, and the second half of the "Ref."
    backbones' stem. ``residual`` adds the stage input back and applies ``act`` to the sum, darknet's
    ``[shortcut] activation=leaky`` over the pool and conv (``yolov3-tiny-prn.cfg`` layers 11-13)."""

    def __init__(self, in_chs: int, out_chs: int, act: str, stride: int = 2, residual: bool = False):
        super().__init__()
        self.pool = DarknetMaxPool(2, stride)
        self.conv = ConvBnAct(in_chs, out_chs, 3, act=act)
        self.act = make_act(act) if residual else None
        self.out_chs = out_chs

    def forward(self, x):
        y = self.conv(self.pool(x))
        return y if self.act is None else self.act(partial_add(y, x))
