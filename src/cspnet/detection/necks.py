"""Detector necks: what turns a backbone's feature levels into the maps each output head reads.

Each neck takes the backbone's features from the finest level to the coarsest (e.g. strides 8, 16,
32) and returns one map per output head, in the order the heads come (``out_chs``, ``out_strides``).
``darknet_order()`` lists its parts, with the heads (``head.<i>``), in the order a darknet cfg
writes their convolutions, so that ``cspnet.convert`` can pair them with a cfg's layers one by one.

- :class:`PANet` (``csresnext50-panet-spp.cfg`` layers 81-137, architectures.md 5.2): SPP on the
  top level, a top-down path, then a bottom-up path; fusion by concatenation; outputs fine to coarse.
- :class:`FPN` (YOLOv3): a top-down path with a head at every level, coarse to fine; with a one-conv
  top and no convs after the concatenation it is ``yolov3-tiny.cfg``'s neck.
- :class:`PRN` (``yolov3-tiny-prn.cfg``, architectures.md 5.5): a top-down path whose steps are
  partial residual adds over the common channels instead of concatenations; coarse to fine.

The necks no cfg defines (EFM, GFM, ``[sam]`` on any neck's outputs) are in :mod:`.fusion`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvBnAct, make_act, partial_add
from ..layers.pyramid import SpatialPyramidPool, Upsample2x


class ConvStack(nn.Sequential):
    """``depth`` convs alternating 1x1 to ``chs`` and 3x3 to ``2 * chs``, starting with the 1x1
    (darknet's five-conv block: 1x1, 3x3, 1x1, 3x3, 1x1); depth 0 passes its input through."""

    def __init__(self, in_chs: int, chs: int, depth: int, act: str = "leaky"):
        units, prev = [], in_chs
        for i in range(depth):
            out, k = (chs, 1) if i % 2 == 0 else (2 * chs, 3)
            units.append(ConvBnAct(prev, out, k, act=act))
            prev = out
        super().__init__(*units)
        self.out_chs = prev


class SPPBlock(nn.Module):
    """1x1, 3x3, 1x1 convs, spatial pyramid pooling (5, 9, 13), then 1x1, 3x3, 1x1 convs
    (``csresnext50-panet-spp.cfg`` layers 81-92). ``depth`` odd: that many convs each side (1: a
    1x1 each side, the light block the fusion necks use)."""

    def __init__(self, in_chs: int, chs: int, act: str = "leaky", sizes=(5, 9, 13), depth: int = 3):
        super().__init__()
        if depth < 1 or depth % 2 == 0:
            raise ValueError(f"spp depth={depth!r} must be odd (convs each side, ending on a 1x1)")
        self.before = ConvStack(in_chs, chs, depth, act)
        self.pool = SpatialPyramidPool(sizes)
        self.after = ConvStack(chs * (len(sizes) + 1), chs, depth, act)
        self.out_chs = chs

    def forward(self, x):
        return self.after(self.pool(self.before(x)))


def _top(in_chs: int, chs: int, spp: bool, depth: int, act: str) -> nn.Module:
    return SPPBlock(in_chs, chs, act) if spp else ConvStack(in_chs, chs, depth, act)


def _check_levels(in_chs, widths) -> None:
    if len(in_chs) < 2 or len(in_chs) != len(widths):
        raise ValueError(f"a neck needs at least two feature levels and one width per level; got levels "
                         f"{list(in_chs)}, widths {list(widths)}")


class TopDownStep(nn.Module):
    """The coarser map reduced (1x1) and upsampled, the finer backbone feature reduced too
    (``lateral``, a 1x1; none in YOLOv3), concatenated, then a conv stack."""

    def __init__(self, coarse_chs: int, fine_chs: int, chs: int, depth: int, act: str, lateral: bool,
                 up_first: bool):
        super().__init__()
        self.reduce = ConvBnAct(coarse_chs, chs, 1, act=act)
        self.up = Upsample2x()
        self.lateral = ConvBnAct(fine_chs, chs, 1, act=act) if lateral else nn.Identity()
        self.stack = ConvStack(chs + (chs if lateral else fine_chs), chs, depth, act)
        self.up_first, self.out_chs = up_first, self.stack.out_chs

    def forward(self, coarse, fine):
        up, fine = self.up(self.reduce(coarse)), self.lateral(fine)
        return self.stack(torch.cat([up, fine] if self.up_first else [fine, up], dim=1))


class BottomUpStep(nn.Module):
    """The finer output down-sampled by a stride-2 3x3 conv, concatenated with this level's
    top-down map (``[down, P]``), then a conv stack."""

    def __init__(self, fine_chs: int, level_chs: int, chs: int, depth: int, act: str):
        super().__init__()
        self.down = ConvBnAct(fine_chs, chs, 3, 2, act=act)
        self.stack = ConvStack(chs + level_chs, chs, depth, act)
        self.out_chs = self.stack.out_chs

    def forward(self, fine, level):
        return self.stack(torch.cat([self.down(fine), level], dim=1))


class PANet(nn.Module):
    """Path aggregation: ``top`` (SPP block, or a conv stack) on the coarsest level, a top-down path
    (each step: ``[lateral(C_i), up(reduce(P_i+1))]``, five convs), then a bottom-up path (each step:
    ``[down(N_i-1), P_i]``, five convs). Outputs ``N_0 .. N_L-1``, fine to coarse, ``widths`` wide."""

    def __init__(self, in_chs: list[int], widths: list[int], spp: bool = True, depth: int = 5, act: str = "leaky"):
        super().__init__()
        _check_levels(in_chs, widths)
        n = len(in_chs)
        self.top = _top(in_chs[-1], widths[-1], spp, depth, act)
        p = [0] * n  # each level's top-down width
        p[-1], top_down = self.top.out_chs, []
        for i in reversed(range(n - 1)):
            top_down.append(TopDownStep(p[i + 1], in_chs[i], widths[i], depth, act, lateral=True, up_first=False))
            p[i] = top_down[-1].out_chs
        outs, bottom_up = [p[0]], []
        for i in range(1, n):
            bottom_up.append(BottomUpStep(outs[-1], p[i], widths[i], depth, act))
            outs.append(bottom_up[-1].out_chs)
        self.top_down, self.bottom_up = nn.ModuleList(top_down), nn.ModuleList(bottom_up)
        self.out_chs, self.levels = outs, n

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = [None] * self.levels
        p[-1] = self.top(feats[-1])
        for step, i in zip(self.top_down, reversed(range(self.levels - 1)), strict=True):
            p[i] = step(p[i + 1], feats[i])
        outs = [p[0]]
        for step, i in zip(self.bottom_up, range(1, self.levels), strict=True):
            outs.append(step(outs[-1], p[i]))
        return outs

    def darknet_order(self) -> list[str]:
        order = ["top", *(f"top_down.{j}" for j in range(self.levels - 1)), "head.0"]
        for j in range(self.levels - 1):
            order += [f"bottom_up.{j}", f"head.{j + 1}"]
        return order

    def output_levels(self) -> list[int]:
        return list(range(self.levels))


class CoarseToFine(nn.Module):
    """A neck whose ``top`` works on the coarsest level and whose ``steps`` go down one level each,
    with a head after each (FPN, PRN): outputs coarse to fine, written in that order by the cfgs."""

    levels: int

    def darknet_order(self) -> list[str]:
        order = ["top", "head.0"]
        for j in range(self.levels - 1):
            order += [f"steps.{j}", f"head.{j + 1}"]
        return order

    def output_levels(self) -> list[int]:
        return list(reversed(range(self.levels)))


class FPN(CoarseToFine):
    """YOLOv3's feature pyramid: ``top`` on the coarsest level, then top-down steps
    (``[up(reduce(P_i+1)), C_i]``, a conv stack), a head at every level. Outputs coarse to fine.
    ``top_depth=1, depth=0`` is yolov3-tiny's neck (one 1x1 on top; the heads' 3x3 does the rest)."""

    def __init__(self, in_chs: list[int], widths: list[int], spp: bool = False, depth: int = 5,
                 top_depth: int | None = None, act: str = "leaky"):
        super().__init__()
        _check_levels(in_chs, widths)
        n = len(in_chs)
        self.top = _top(in_chs[-1], widths[-1], spp, depth if top_depth is None else top_depth, act)
        outs, steps = [self.top.out_chs], []
        for i in reversed(range(n - 1)):
            steps.append(TopDownStep(outs[-1], in_chs[i], widths[i], depth, act, lateral=False, up_first=True))
            outs.append(steps[-1].out_chs)
        self.steps = nn.ModuleList(steps)
        self.out_chs, self.levels = outs, n

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [self.top(feats[-1])]
        for step, i in zip(self.steps, reversed(range(self.levels - 1)), strict=True):
            outs.append(step(outs[-1], feats[i]))
        return outs


class PRNTop(nn.Module):
    """1x1 then 3x3 at the same width, the 1x1's output added back (``yolov3-tiny-prn.cfg`` layers
    14-16). ``skip`` is the 3x3's output before the add: what the next level reduces (layer 19)."""

    def __init__(self, in_chs: int, chs: int, act: str):
        super().__init__()
        self.reduce = ConvBnAct(in_chs, chs, 1, act=act)
        self.conv = ConvBnAct(chs, chs, 3, act=act)
        self.act = make_act(act)
        self.out_chs = chs

    def forward(self, x):
        a = self.reduce(x)
        b = self.conv(a)
        return self.act(b + a), b


class PRNStep(nn.Module):
    """A top-down step of partial residual adds (``yolov3-tiny-prn.cfg`` layers 20-25): the coarser
    map reduced and upsampled (``u``); ``s = act(u + C[:w])`` over the common channels; a 3x3;
    ``act(act(conv(s) + u) + C[:w])``. The backbone feature's surplus channels are dropped, as
    darknet's ``[shortcut]`` does."""

    def __init__(self, coarse_chs: int, chs: int, act: str):
        super().__init__()
        self.reduce = ConvBnAct(coarse_chs, chs, 1, act=act)
        self.up = Upsample2x()
        self.conv = ConvBnAct(chs, chs, 3, act=act)
        self.act = make_act(act)
        self.out_chs = chs

    def forward(self, coarse, fine):
        u = self.up(self.reduce(coarse))
        b = self.conv(self.act(partial_add(u, fine)))
        return self.act(partial_add(self.act(b + u), fine)), b


class PRN(CoarseToFine):
    """Partial residual network neck: :class:`PRNTop` on the coarsest level, then :class:`PRNStep`s
    down to the finest; the heads are 1x1 predictions only. Outputs coarse to fine."""

    def __init__(self, in_chs: list[int], widths: list[int], act: str = "leaky"):
        super().__init__()
        _check_levels(in_chs, widths)
        n = len(in_chs)
        self.top = PRNTop(in_chs[-1], widths[-1], act)
        self.steps = nn.ModuleList(PRNStep(widths[i + 1], widths[i], act) for i in reversed(range(n - 1)))
        self.out_chs, self.levels = [widths[i] for i in reversed(range(n))], n

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out, skip = self.top(feats[-1])
        outs = [out]
        for step, i in zip(self.steps, reversed(range(self.levels - 1)), strict=True):
            out, skip = step(skip, feats[i])
            outs.append(out)
        return outs
