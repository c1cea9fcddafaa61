"""Convolution units: conv -> BN -> act (darknet, timm CSP) and BN -> act -> conv (DenseNet-BC)."""

from __future__ import annotations

from torch import nn

from .activations import make_act


def _check_groups(in_chs: int, out_chs: int, groups: int) -> None:
    if groups < 1 or in_chs % groups or out_chs % groups:
        allowed = [g for g in range(1, min(in_chs, out_chs) + 1) if in_chs % g == 0 and out_chs % g == 0]
        raise ValueError(
            f"groups={groups} must divide both in_chs={in_chs} and out_chs={out_chs}; "
            f"allowed: {', '.join(map(str, allowed))}"
        )


class ConvBnAct(nn.Module):
    """Conv -> BatchNorm -> activation, darknet's ``[convolutional] batch_normalize=1``.

    With ``bn=False`` the conv carries a bias instead (darknet's un-normalised conv).
    ``padding`` defaults to ``kernel_size // 2``, darknet's ``pad=1``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "leaky",
        bn: bool = True,
        padding: int | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        _check_groups(in_chs, out_chs, groups)
        self.in_chs, self.out_chs = in_chs, out_chs
        pad = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, pad, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum) if bn else nn.Identity()
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BnActConv(nn.Module):
    """BatchNorm -> activation -> conv: the pre-activation unit of DenseNet-BC (torchvision/timm)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ):
        super().__init__()
        _check_groups(in_chs, out_chs, groups)
        self.in_chs, self.out_chs = in_chs, out_chs
        self.bn = nn.BatchNorm2d(in_chs)
        self.act = make_act(act)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(self.act(self.bn(x)))
