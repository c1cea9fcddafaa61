"""PeleeNet (Wang, Li, Ling, NeurIPS 2018), CSPPeleeNet and the Table 1 ablations of CSPNet.

PeleeNet follows the official code (Robert-JunWang/PeleeNet ``peleenet.py`` and the Caffe
builder): a stride-4 stem block, two-way dense layers (growth 32, 16 new channels per branch,
bottleneck 16/32/64/64), width-keeping 1x1 transitions, 2x2 avg-pool after stages 1-3.

No cfg of CSPPeleeNet was ever released; what is reconstructed here, and why, is written down in
``docs/reconstructions-pelee.md``. In short: the stage input is sliced (no split conv), ``gamma`` of
it bypasses the dense block, the dense output gets a width-keeping partial transition, the two are
concatenated (bypass first, paper Eq. 3), pooled, and the second transition runs after the pool.
The CSP design covers stages 1-3 (``csp_stages``); the 7x7 fourth stage stays plain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..csp import FUSIONS, POOL_POSITIONS, CrossStagePartial
from ..layers import AvgPool2x2, ConvBnAct, DarknetMaxPool, DenseBlock
from .classifier import Classifier, stage_feature_info
from .config import Reference, config_type


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


@config_type
@dataclass(frozen=True)
class PeleeStage:
    """One dense stage. ``out_chs``: width after the transition (PeleeNet keeps the dense width:
    input + depth x growth). ``bottleneck_chs``: width of each branch's 1x1 conv (PeleeNet's
    "dynamic bottleneck", 16 x [1, 2, 4, 4]). ``pool``: a 2x2/2 avg-pool closes the stage."""

    depth: int
    out_chs: int
    bottleneck_chs: int
    pool: bool = True
    gamma: float = 0.5
    fusion: str = "none"


@config_type
@dataclass(frozen=True)
class PeleeNetCfg:
    """``csp_stages``: the stages a ``gamma=``/``fusion=`` override reaches. ``pool_position``: where
    the avg-pool sits in a CSP stage with a final transition (``"before_transition"``: the second
    transition runs after the pool, the reconstruction that reproduces CSPPeleeNet's BFLOPs)."""

    stages: tuple[PeleeStage, ...]
    growth: int = 32
    stem_chs: int = 32
    act: str = "leaky"
    pool_position: str = "before_transition"
    csp_stages: tuple[int, ...] = (0, 1, 2)
    drop_rate: float = 0.05
    reference: Reference | None = None


def check_csp_row(i: int, gamma: float, fusion: str, default_gamma: float = 0.5) -> None:
    """A plain stage has no split, so a gamma other than the default there is a mistake."""
    if fusion not in FUSIONS:
        raise ValueError(f"stage {i}: fusion={fusion!r} is not allowed; choose one of {', '.join(FUSIONS)}")
    if fusion == "none" and gamma != default_gamma:
        raise ValueError(
            f"stage {i}: gamma={gamma!r} has no effect on a plain stage (fusion='none'); pass fusion='first', "
            f"'last' or 'full' with it, or gamma={default_gamma}"
        )


def check_csp_stages(csp_stages, n: int) -> None:
    if not isinstance(csp_stages, tuple) or any(
        isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in csp_stages
    ):
        raise ValueError(f"csp_stages={csp_stages!r} must be a tuple of stage indices in [0, {n - 1}]")


def build_peleenet(cfg: PeleeNetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.pool_position not in POOL_POSITIONS:
        raise ValueError(
            f"pool_position={cfg.pool_position!r} is not allowed; choose one of {', '.join(POOL_POSITIONS)}"
        )
    check_csp_stages(cfg.csp_stages, len(cfg.stages))
    stem = StemBlock(in_chans, cfg.stem_chs, cfg.act)
    prev, stages, levels = cfg.stem_chs, [], []
    for i, st in enumerate(cfg.stages):
        check_csp_row(i, st.gamma, st.fusion)
        make_blocks = two_way_dense_block(st.depth, cfg.growth, st.bottleneck_chs, cfg.act)
        pool = AvgPool2x2(ceil_mode=True) if st.pool else None
        if st.fusion == "none":
            stage = CrossStagePartial(
                prev, st.out_chs, make_blocks, fusion="none", transition="always", pool=pool, act=cfg.act
            )
        else:
            stage = CrossStagePartial(
                prev, st.out_chs, make_blocks, gamma=st.gamma, fusion=st.fusion, split="slice",
                concat="bypass_first", pool=pool, pool_position=cfg.pool_position, act=cfg.act,
            )
        stages.append(stage)
        levels.append((st.out_chs, 2 if st.pool else 1))
        prev = st.out_chs
    info = stage_feature_info(cfg.stem_chs, 4, levels)
    return Classifier(stem, stages, info, num_classes, drop_rate=cfg.drop_rate)


# PeleeNet: depths 3/4/8/6, growth 32, widths 32 + 32 x depth, bottleneck 16 x [1, 2, 4, 4]
_PELEE = (
    PeleeStage(3, 128, 16),
    PeleeStage(4, 256, 32),
    PeleeStage(8, 512, 64),
    PeleeStage(6, 704, 64, pool=False),
)


def _csp(stages, gamma: float, fusion: str, csp_stages=(0, 1, 2)):
    return tuple(
        replace(st, gamma=gamma, fusion=fusion) if i in csp_stages else st for i, st in enumerate(stages)
    )


_SRC = "CrossStagePartialNetworks README (darknet retraining, LReLU); paper Table 1"
_CSP_NOTE = "reconstruction (no cfg released): docs/reconstructions-pelee.md"

CFGS: dict[str, PeleeNetCfg] = {
    "peleenet": PeleeNetCfg(
        _PELEE,
        reference=Reference(
            None, 1.017, 224, weights=2.79, top1=70.7, top5=90.0, source=_SRC, tolerance=0.03,
            note="README figures are at 224 (architectures.md 1.2); darknet adds ~0.001 for pooling",
        ),
    ),
    "csppeleenet": PeleeNetCfg(
        _csp(_PELEE, 0.5, "full"),
        reference=Reference(
            None, 0.888, 224, weights=2.83, top1=70.9, top5=90.2, source=_SRC, tolerance=0.03, note=_CSP_NOTE
        ),
    ),
}

# Table 1: partial ratio x fusion, on the stages the CSP design covers
for _fusion in ("first", "last", "full"):
    for _gamma in (0.25, 0.5, 0.75):
        _name = f"csppeleenet_{_fusion}_g{int(_gamma * 100)}"
        if _fusion == "full" and _gamma == 0.5:
            continue  # that is csppeleenet itself
        CFGS[_name] = PeleeNetCfg(_csp(_PELEE, _gamma, _fusion))

# width/depth-scaled members for tests and CPU demos (growth 16, stem 16)
_PELEE_TINY = (
    PeleeStage(1, 32, 8),
    PeleeStage(1, 48, 8),
    PeleeStage(2, 80, 16),
    PeleeStage(1, 96, 16, pool=False),
)
CFGS["peleenet_tiny"] = PeleeNetCfg(_PELEE_TINY, growth=16, stem_chs=16)
CFGS["csppeleenet_tiny"] = PeleeNetCfg(_csp(_PELEE_TINY, 0.5, "full"), growth=16, stem_chs=16)

DOCS = {
    "peleenet": "PeleeNet (official structure), paper Table 1 baseline",
    "csppeleenet": "CSPPeleeNet, reconstructed (Table 1 final row)",
    "peleenet_tiny": "PeleeNet, width/depth-scaled for tests",
    "csppeleenet_tiny": "CSPPeleeNet, width/depth-scaled for tests",
}
DOCS.update({
    n: f"Table 1 ablation: fusion {n.split('_')[1]}, gamma 0.{n.split('_g')[1]}"
    for n in CFGS if n.startswith("csppeleenet_") and n != "csppeleenet_tiny"
})
