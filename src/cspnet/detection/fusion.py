"""The paper's fusion necks that no cfg defines (arch. 5.6-5.8; choices in docs/reconstructions-detection.md).

- :class:`EFM` (Exact Fusion Model, Fig. 6c): the output of level ``s`` fuses the backbone features
  of levels ``s-1``, ``s`` and ``s+1`` only: the levels whose anchors bound those of ``s``.
- :class:`GFM` (Global Fusion Model, Fig. 6b): every output fuses the features of all levels.

Both compress every backbone feature by Maxout *before* the concatenation (the author: "applied
maxpool_depth before route", CSP issue #1), bring it to the output's resolution (a finer level:
2x2/2 max-pools or, ``down="conv"``, a last 3x3/2 conv; a coarser level: nearest upsampling),
concatenate fine to coarse and run a conv stack. Outputs fine to coarse, as :class:`~.necks.PANet`'s.
:class:`AttentionNeck` puts darknet's ``[sam]`` on the outputs of any neck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBnAct, DarknetMaxPool
from ..layers.pyramid import Maxout, SpatialAttention
from .necks import ConvStack, SPPBlock, _check_levels

DOWNS = ("pool", "conv")


class Resample(nn.Module):
    """A map moved ``steps`` levels coarser (``steps > 0``: 2x2/2 max-pools, the last one a 3x3/2
    conv when ``down="conv"``) or ``-steps`` levels finer (nearest, to the target's size, so that odd
    sizes round as the backbone rounded them); ``steps == 0`` passes it through."""

    def __init__(self, chs: int, steps: int, down: str, act: str):
        super().__init__()
        pools = steps - 1 if steps > 0 and down == "conv" else max(steps, 0)
        layers: list[nn.Module] = [DarknetMaxPool(2, 2) for _ in range(pools)]
        if steps > 0 and down == "conv":
            layers.append(ConvBnAct(chs, chs, 3, 2, act=act))
        self.down = nn.Sequential(*layers)
        self.steps = steps

    def forward(self, x, size):
        if self.steps < 0:
            return F.interpolate(x, size=tuple(size), mode="nearest")
        return self.down(x)

    def extra_repr(self):
        return f"steps={self.steps}"


class Route(nn.Module):
    """darknet's ``[route]`` of several maps: their concatenation along channels (a module, so that
    hooks and :mod:`.memory` see the fused pyramid)."""

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(maps, dim=1)


class FusionStep(nn.Module):
    """One output: the compressed features of ``sources`` resampled to ``level``, routed fine to
    coarse, then ``depth`` convs (:class:`~.necks.ConvStack`) to ``width``."""

    def __init__(self, level: int, sources: list[int], chs: list[int], width: int, depth: int, down: str, act: str):
        super().__init__()
        self.level, self.sources = level, list(sources)
        self.resample = nn.ModuleList(Resample(chs[j], level - j, down, act) for j in sources)
        self.route = Route()
        self.fused_chs = sum(chs[j] for j in sources)
        self.stack = ConvStack(self.fused_chs, width, depth, act)
        self.out_chs = self.stack.out_chs

    def fused(self, compressed: list[torch.Tensor]) -> torch.Tensor:
        size = compressed[self.level].shape[-2:]
        return self.route([r(compressed[j], size) for r, j in zip(self.resample, self.sources, strict=True)])

    def forward(self, compressed: list[torch.Tensor]) -> torch.Tensor:
        return self.stack(self.fused(compressed))


class FusionNeck(nn.Module):
    """Output ``s`` fuses the levels within ``reach`` of ``s`` (None: all). ``maxout``: the group size
    of the channel max applied to every feature before the route (1: none, the ablation of the
    memory claim). ``spp``: an :class:`~.necks.SPPBlock` to ``widths[-1]`` (a 1x1 each side; darknet's
    three each side once ``depth >= 3``) replaces the coarsest feature first. ``down``: how a finer level is reduced."""

    def __init__(self, in_chs: list[int], widths: list[int], reach: int | None, maxout: int = 2, down: str = "pool",
                 spp: bool = False, depth: int = 1, act: str = "leaky"):
        super().__init__()
        _check_levels(in_chs, widths)
        if isinstance(maxout, bool) or not isinstance(maxout, int) or maxout < 1:
            raise ValueError(f"maxout={maxout!r} must be a positive integer group size (1: no Maxout)")
        if down not in DOWNS:
            raise ValueError(f"down={down!r} is not allowed; choose one of {', '.join(DOWNS)}")
        n = len(in_chs)
        self.spp = SPPBlock(in_chs[-1], widths[-1], act, depth=3 if depth >= 3 else 1) if spp else None
        chs = [*in_chs[:-1], self.spp.out_chs if spp else in_chs[-1]]
        bad = [c for c in chs if c % maxout]
        if bad:
            raise ValueError(f"maxout={maxout} must divide every fused feature's channels; got {chs}")
        self.compress = Maxout(maxout) if maxout > 1 else nn.Identity()
        comp = [c // maxout for c in chs]
        reach = n - 1 if reach is None else reach
        self.fuse = nn.ModuleList(
            FusionStep(s, [j for j in range(n) if abs(j - s) <= reach], comp, widths[s], depth, down, act)
            for s in range(n))
        self.out_chs, self.levels, self.maxout = [f.out_chs for f in self.fuse], n, maxout

    def compressed(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        if self.spp is not None:
            feats[-1] = self.spp(feats[-1])
        return [self.compress(f) for f in feats]

    def pyramid(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The fused maps before the conv stacks: what "generating the feature pyramid" makes."""
        comp = self.compressed(feats)
        return [step.fused(comp) for step in self.fuse]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        comp = self.compressed(feats)
        return [step(comp) for step in self.fuse]

    def darknet_order(self) -> list[str]:
        order = ["spp"] if self.spp is not None else []
        for i in range(self.levels):
            order += [f"fuse.{i}", f"head.{i}"]
        return order

    def output_levels(self) -> list[int]:
        return list(range(self.levels))


class EFM(FusionNeck):
    """Exact fusion: output ``s`` reads levels ``s-1``, ``s``, ``s+1`` (the two ends read two)."""

    def __init__(self, in_chs: list[int], widths: list[int], **kwargs):
        super().__init__(in_chs, widths, reach=1, **kwargs)


class GFM(FusionNeck):
    """Global fusion: every output reads every level (EFM's compression and stacks, for a like-for-like
    ablation)."""

    def __init__(self, in_chs: list[int], widths: list[int], **kwargs):
        super().__init__(in_chs, widths, reach=None, **kwargs)


class AttentionNeck(nn.Module):
    """``base``'s outputs, each passed through darknet's ``[sam]`` (``x * sigmoid(BN(conv1x1(x)))``)
    just before its head; the maps ``base`` passes between its own steps are not gated."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.sam = nn.ModuleList(SpatialAttention(c) for c in base.out_chs)
        self.out_chs = list(base.out_chs)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [sam(o) for sam, o in zip(self.sam, self.base(feats), strict=True)]

    def darknet_order(self) -> list[str]:
        order = []
        for part in self.base.darknet_order():
            order += [f"sam.{part[5:]}", part] if part.startswith("head.") else [f"base.{part}"]
        return order

    def output_levels(self) -> list[int]:
        return self.base.output_levels()
