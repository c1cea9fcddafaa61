"""PeleeNet's building blocks (Wang, Li, Ling, NeurIPS 2018): the stride-4 stem block and the
two-way dense layer. PeleeNet, CSPPeleeNet and the CSPPeleeNet "Ref." backbones are built of them."""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvBnAct
from .dense import DenseBlock
from .pooling import DarknetMaxPool


class StemBlock(nn.Module):
    """3x3/2 conv, then [2x2/2 max-pool | 1x1 -> 3x3/2 conv] concatenated (pool first) and fused by
    a 1x1 conv: stride 4 at little cost (PeleeNet Fig. 2). The pool rounds up like the conv, so odd
    input sizes work."""

    def __init__(self, in_chans: int, chs: int, act: str):
        super().__init__()
        if chs % 2:
            raise ValueError(f"stem_chs={chs} must be even (the stem's 1x1 branch is half as wide)")
        self.conv1 = ConvBnAct(in_chans, chs, 3, 2, act=act)
        self.branch_conv1 = ConvBnAct(chs, chs // 2, 1, act=act)
        self.branch_conv2 = ConvBnAct(chs // 2, chs, 3, 2, act=act)
        self.pool = DarknetMaxPool(2, 2)
        self.fuse = ConvBnAct(2 * chs, chs, 1, act=act)
        self.out_chs = chs

    output_unit = "fuse"  # its output is the block's (see CrossStagePartial.output_unit)

    def forward(self, x):
        x = self.conv1(x)
        return self.fuse(torch.cat([self.pool(x), self.branch_conv2(self.branch_conv1(x))], dim=1))


class TwoWayDenseLayer(nn.Module):
    """Two branches of ``growth / 2`` new channels each: 1x1 -> 3x3 (small receptive field) and
    1x1 -> 3x3 -> 3x3 (large). ``out_chs`` is the number of new channels, as
    :class:`~cspnet.layers.DenseBlock` expects; the block concatenates [input, branch 1, branch 2]."""

    def __init__(self, in_chs: int, growth: int, bottleneck_chs: int, act: str):
        super().__init__()
        half = growth // 2
        self.branch1 = nn.Sequential(
            ConvBnAct(in_chs, bottleneck_chs, 1, act=act), ConvBnAct(bottleneck_chs, half, 3, act=act)
        )
        self.branch2 = nn.Sequential(
            ConvBnAct(in_chs, bottleneck_chs, 1, act=act),
            ConvBnAct(bottleneck_chs, half, 3, act=act),
            ConvBnAct(half, half, 3, act=act),
        )
        self.out_chs = 2 * half

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x)], dim=1)


def two_way_dense_block(depth: int, growth: int, bottleneck_chs: int, act: str):
    """``make_blocks`` for :class:`CrossStagePartial`: a dense block of two-way layers."""
    if growth < 2 or growth % 2:
        raise ValueError(f"growth={growth!r} must be an even number >= 2 (two branches of growth/2)")
    if bottleneck_chs < 1:
        raise ValueError(f"bottleneck_chs={bottleneck_chs!r} must be positive")

    def make_blocks(chs: int) -> DenseBlock:
        return DenseBlock(
            chs, depth, new_first=False, layer_fn=lambda c: TwoWayDenseLayer(c, growth, bottleneck_chs, act)
        )

    return make_blocks
