"""The "Ref." backbones of the CSPNet README: CSPDenseNet(b) Ref. and CSPPeleeNet(b) Ref.

Nobody documents them (no cfg, no issue answer); only their names, sizes and costs are published,
and their bracketed deltas are taken against Darknet Ref. (``darknet.cfg``, model ``darknet_ref``).
They are reconstructed on Darknet Ref.'s macro layout: 256 input, a stride-2 step before each of
the widths 32, 64, 128, 256, 512, 1024 (six in all, the same places), each 3x3 conv from the
64-filter one on replaced by a cross-stage-partial dense stage of the same output width. The "b"
members halve every stage width. Dense layers are darknet DenseNet-201's (1x1 -> 3x3, leaky) or
PeleeNet's two-way layer; the depths (and CSPDenseNetb Ref.'s growth) are fitted to the published
params/BFLOPs. ``docs/reconstructions-pelee.md`` says which choice rests on what.

The paper uses them as detector backbones (PRN / EFM heads at 320/416), so every stage is a feature
level; strides 8, 16 and 32 are levels 2-4 (``features_only=True, out_indices=(2, 3, 4)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from ..csp import CrossStagePartial
from ..layers import ConvBnAct, DarknetMaxPool, DenseBlock, PoolConv, StemBlock, two_way_dense_block
from .classifier import Classifier
from .config import Reference, config_type
from .stages import chain_stages

LAYERS = ("dense", "two_way")
STEMS = ("darknet", "pelee")


class DarknetRefStem(nn.Sequential):
    """Darknet Ref.'s first two layers: 3x3 conv to ``chs // 2``, then 2x2/2 max-pool and 3x3 conv
    to ``chs`` (``darknet.cfg`` layers 0-2); stride 2."""

    def __init__(self, in_chans: int, chs: int, act: str):
        super().__init__()
        self.conv = ConvBnAct(in_chans, chs // 2, 3, act=act)
        self.pool_conv = PoolConv(chs // 2, chs, act)
        self.out_chs = chs


@config_type
@dataclass(frozen=True)
class RefStage:
    """``stride=2`` opens the stage with a 2x2/2 max-pool (Darknet Ref.'s pools). ``growth`` /
    ``bottleneck_chs``: new channels per dense layer and the width of its 1x1 conv (per branch for
    the two-way layer)."""

    depth: int
    out_chs: int
    growth: int
    bottleneck_chs: int
    stride: int = 2
    gamma: float = 0.5
    fusion: str = "full"


@config_type
@dataclass(frozen=True)
class RefNetCfg:
    """``layer``: ``"dense"`` (darknet DenseNet-201's layer, [new, previous] order) or ``"two_way"``
    (PeleeNet's). ``stem``: ``"darknet"`` (:class:`DarknetRefStem`, stride 2) or ``"pelee"``
    (PeleeNet's stem block, stride 4)."""

    stages: tuple[RefStage, ...]
    layer: str = "dense"
    stem: str = "darknet"
    stem_chs: int = 32
    act: str = "leaky"
    csp_stages: tuple[int, ...] = (0, 1, 2, 3, 4)
    drop_rate: float = 0.0
    reference: Reference | None = None


def _make_blocks(cfg: RefNetCfg, st: RefStage):
    if cfg.layer == "two_way":
        return two_way_dense_block(st.depth, st.growth, st.bottleneck_chs, cfg.act)

    def make_blocks(chs: int) -> DenseBlock:
        return DenseBlock(chs, st.depth, st.growth, st.bottleneck_chs, cfg.act, new_first=True)

    return make_blocks


def build_refnet(cfg: RefNetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.layer not in LAYERS:
        raise ValueError(f"layer={cfg.layer!r} is not allowed; choose one of {', '.join(map(repr, LAYERS))}")
    if cfg.stem not in STEMS:
        raise ValueError(f"stem={cfg.stem!r} is not allowed; choose one of {', '.join(map(repr, STEMS))}")

    def make_stage(i, st, in_chs):
        if st.stride not in (1, 2):
            raise ValueError(f"stage {i}: stride={st.stride!r} is not allowed; choose 1 or 2")
        stage = CrossStagePartial(
            in_chs, st.out_chs, _make_blocks(cfg, st), gamma=st.gamma, fusion=st.fusion,
            down=DarknetMaxPool(2, 2) if st.stride == 2 else None, split="slice", concat="bypass_first",
            act=cfg.act,
        )
        return stage, st.stride

    if cfg.stem == "darknet":
        stem, reduction = DarknetRefStem(in_chans, cfg.stem_chs, cfg.act), 2
    else:
        stem, reduction = StemBlock(in_chans, cfg.stem_chs, cfg.act), 4
    return chain_stages(stem, reduction, cfg.stages, make_stage, num_classes, cfg.csp_stages,
                        drop_rate=cfg.drop_rate)


_WIDTHS = (64, 128, 256, 512, 1024)  # darknet.cfg filters of the layers at strides 4..64
_HALF = tuple(w // 2 for w in _WIDTHS)


def _rows(depths, widths, growth, bottlenecks, first_stride):
    strides = (first_stride,) + (2,) * (len(depths) - 1)
    return tuple(
        RefStage(d, w, growth, b, s) for d, w, b, s in zip(depths, widths, bottlenecks, strides, strict=True)
    )


_PELEE_BOTTLENECKS = (16, 32, 64, 64, 64)  # PeleeNet's 16 x [1, 2, 4, 4], the last repeated


def _ref(params, gflops, top1, top5, name):
    return Reference(
        None, gflops, 256, weights=params, top1=top1, top5=top5, tolerance=0.03,
        source="CrossStagePartialNetworks README (ImageNet table); architectures.md section 4",
        note=f"{name}: reconstruction, no cfg released; depths fitted (docs/reconstructions-pelee.md)",
    )


CFGS: dict[str, RefNetCfg] = {
    "cspdensenet_ref": RefNetCfg(
        _rows((1, 1, 1, 6, 7), _WIDTHS, 32, (128,) * 5, 2),
        reference=_ref(3.48, 0.886, 65.7, 86.6, "CSPDenseNet Ref."),
    ),
    "cspdensenetb_ref": RefNetCfg(
        _rows((2, 4, 5, 7, 9), _HALF, 16, (64,) * 5, 2),
        reference=_ref(1.38, 0.631, 64.2, 85.5, "CSPDenseNetb Ref."),
    ),
    "csppeleenet_ref": RefNetCfg(
        _rows((3, 4, 7, 7, 9), _WIDTHS, 32, _PELEE_BOTTLENECKS, 1), layer="two_way", stem="pelee",
        reference=_ref(4.10, 1.103, 68.9, 88.7, "CSPPeleeNet Ref."),
    ),
    "csppeleenetb_ref": RefNetCfg(
        _rows((3, 5, 5, 6, 7), _HALF, 32, _PELEE_BOTTLENECKS, 1), layer="two_way", stem="pelee",
        reference=_ref(2.01, 0.897, 67.8, 88.1, "CSPPeleeNetb Ref."),
    ),
}
# tests/CPU demos: narrow, one layer per stage, and only the stages up to stride 32 (the levels a
# detector reads), so a 64-pixel batch of one still trains (BatchNorm needs more than 1x1)
CFGS["cspdensenet_ref_tiny"] = replace(
    CFGS["cspdensenet_ref"], stages=_rows((1,) * 4, (16, 24, 32, 48), 8, (16,) * 4, 2), stem_chs=16,
    csp_stages=(0, 1, 2, 3), reference=None,
)

DOCS = {
    "cspdensenet_ref": "CSPDenseNet Ref., reconstructed on the Darknet Ref. layout",
    "cspdensenetb_ref": "CSPDenseNetb Ref., reconstructed (half widths)",
    "csppeleenet_ref": "CSPPeleeNet Ref., reconstructed on the Darknet Ref. layout",
    "csppeleenetb_ref": "CSPPeleeNetb Ref., reconstructed (half widths)",
    "cspdensenet_ref_tiny": "CSPDenseNet Ref., width/depth-scaled for tests",
}
