"""DenseNet-201 as darknet builds it (``densenet201.cfg``), its CSP version, and timm's
(torchvision's) DenseNet-201.

darknet's DenseNet-201 is not torchvision's (architectures.md 3.1): post-activation leaky units,
the concatenation ordered [new, previous], 2x2 max-pool transitions, a 512-wide third transition
(1536 final channels instead of 1920), no final BN, and the classifier conv applied at 8x8 before the
global pool.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..csp import CrossStagePartial
from ..layers import AvgPool2x2, ConvPoolStem, DarknetMaxPool, DenseBlock, make_act
from .classifier import Classifier
from .config import Reference, config_type
from .stages import chain_stages


class ElasticDenseLayer(nn.Module):
    """ELASTIC's dense layer (Wang et al., CVPR 2019; allenai/elastic ``models/densenet.py``).

    A shared BN -> ReLU on the input feeds two branches of 1x1 (``bottleneck_chs`` / 2) -> BN ->
    ReLU -> 3x3 (``growth``): one at full resolution, one after a 2x2/2 average pool whose output is
    bilinearly resized back. The two are summed, so the growth stays ``growth``. With
    ``low_res=False`` (the last block, already 7x7 at 224) both branches run at full resolution.
    """

    def __init__(self, in_chs: int, growth: int, bottleneck_chs: int, act: str = "relu", low_res: bool = True):
        super().__init__()
        half = bottleneck_chs // 2
        self.bn = nn.BatchNorm2d(in_chs)
        self.act = make_act(act)
        self.high = nn.Sequential(BnActConvPair(in_chs, half, growth, act))
        self.low = nn.Sequential(BnActConvPair(in_chs, half, growth, act))
        self.low_res = low_res
        self.out_chs = growth

    def forward(self, x):
        x = self.act(self.bn(x))
        if not self.low_res:
            return self.high(x) + self.low(x)
        low = self.low(F.avg_pool2d(x, 2))
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.high(x) + low


class BnActConvPair(nn.Sequential):
    """conv 1x1 -> BN -> act -> conv 3x3: one ELASTIC branch (its input is already normalised)."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(mid_chs)
        self.act = make_act(act)
        self.conv2 = nn.Conv2d(mid_chs, out_chs, 3, padding=1, bias=False)


@config_type
@dataclass(frozen=True)
class DenseStage:
    """``depth`` dense layers, then a 1x1 transition to ``out_chs`` (``None``: no transition, the
    last stage) and a 2x2/2 pool when ``pool``. ``elastic``: ELASTIC layers with a low-resolution
    branch (with ``DenseNetCfg.layer="elastic"``)."""

    depth: int
    out_chs: int | None = None
    pool: bool = True
    gamma: float = 0.5
    fusion: str = "none"
    elastic: bool = False


@config_type
@dataclass(frozen=True)
class DenseNetCfg:
    """``preact``/``new_first``/``transition_pool``/``final_norm`` switch between darknet's layout
    (conv-BN-leaky, [new, previous], max-pool) and torchvision's (BN-ReLU-conv, [previous, new],
    avg-pool, a final BN-ReLU). ``split``/``concat``/``pool_position`` are the CSP stage layout.
    ``csp_stages``: the stages a ``gamma=``/``fusion=`` override reaches (``None``: all), so a model
    whose CSP covers a subset keeps its plain stages plain under an ablation override."""

    stages: tuple[DenseStage, ...]
    growth: int = 32
    bottleneck_chs: int = 128
    stem: str = "darknet"
    stem_chs: int = 64
    act: str = "leaky"
    layer: str = "dense"
    preact: bool = False
    new_first: bool = True
    transition_pool: str = "max"
    final_norm: bool = False
    fc_first: bool = False
    split: str = "slice"
    concat: str = "blocks_first"
    pool_position: str = "end"
    drop_rate: float = 0.0
    csp_stages: tuple[int, ...] | None = None
    reference: Reference | None = None


def _pool(kind: str) -> nn.Module:
    if kind == "max":
        return DarknetMaxPool(2, 2)
    if kind == "avg":
        return AvgPool2x2()
    raise ValueError(f"transition_pool={kind!r} is not allowed; choose 'max' or 'avg'")


def build_densenet(cfg: DenseNetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.layer not in ("dense", "elastic"):
        raise ValueError(f"layer={cfg.layer!r} is not allowed; choose 'dense' or 'elastic'")

    def make_stage(i, st, in_chs):
        def make_blocks(chs):
            layer_fn = None
            if cfg.layer == "elastic":
                def layer_fn(c):
                    return ElasticDenseLayer(c, cfg.growth, cfg.bottleneck_chs, cfg.act, st.elastic)
            return DenseBlock(
                chs, st.depth, cfg.growth, cfg.bottleneck_chs, cfg.act, cfg.preact, cfg.new_first, layer_fn
            )

        out = st.out_chs if st.out_chs is not None else in_chs + st.depth * cfg.growth
        stage = CrossStagePartial(
            in_chs, out, make_blocks, gamma=st.gamma, fusion=st.fusion, split=cfg.split, concat=cfg.concat,
            transition="always" if st.out_chs is not None else "never", act=cfg.act, preact=cfg.preact,
            pool=_pool(cfg.transition_pool) if st.pool else None, pool_position=cfg.pool_position,
        )
        return stage, 2 if st.pool else 1

    def make_final(width):
        return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(width), act=make_act(cfg.act)))

    stem = ConvPoolStem(in_chans, cfg.stem_chs, cfg.stem, cfg.act)
    return chain_stages(stem, 4, cfg.stages, make_stage, num_classes, cfg.csp_stages,
                        make_final if cfg.final_norm else None, fc_first=cfg.fc_first, drop_rate=cfg.drop_rate)


_D201 = (6, 12, 48, 32)


def _stages(outs, fusion="none", depths=_D201, elastic=False, csp_stages=None):
    """One row per stage; ``fusion`` applies to the stages in ``csp_stages`` (default all)."""
    pools = (True,) * (len(depths) - 1) + (False,)
    return tuple(
        DenseStage(d, o, p, fusion=fusion if csp_stages is None or i in csp_stages else "none", elastic=elastic and p)
        for i, (d, o, p) in enumerate(zip(depths, outs, pools, strict=True))
    )


_TORCHVISION = dict(stem="torchvision", act="relu", preact=True, new_first=False, transition_pool="avg",
                    final_norm=True, concat="bypass_first")
_ELASTIC = dict(_TORCHVISION, layer="elastic")
_E201 = (10, 20, 40, 30)

CFGS = {
    "densenet201": DenseNetCfg(
        _stages((128, 256, 512, None)), fc_first=True,
        reference=Reference(17.17, 10.848, 256, weights=17.14,
                            source="darknet-cfg/alexeyab-darknet/densenet201.cfg; INDEX.md cross-check"),
    ),
    # Reconstruction (no cfg, no published figures): CSP with fusion first on every stage of the
    # darknet DenseNet-201: half of each stage input bypasses the dense layers, and the stage's own
    # transition fuses the concatenation after the 2x2 pool (pool_position="before_transition").
    # With no figures to fit, nothing argues for leaving a stage plain, so every stage is CSP (the
    # paper's CSPDenseNet design); cspdensenet201_elastic below leaves its first stage plain only
    # because Table 3's figures say so.
    "cspdensenet201": DenseNetCfg(
        _stages((128, 256, 512, None), "first"), fc_first=True, pool_position="before_transition",
    ),
    "timm_densenet201": DenseNetCfg(_stages((128, 256, 896, None)), **_TORCHVISION),
    # ELASTIC's DenseNet-201 (allenai/elastic): blocks 10/20/40/30, elastic layers except the last block
    "densenet201_elastic": DenseNetCfg(
        _stages((192, 416, 848, None), depths=_E201, elastic=True), **_ELASTIC,
        reference=Reference(19.48, 8.77, 224, top1=77.9, top5=94.0, tolerance=0.03,
                            source="paper Table 3 (DenseNet-201-Elastic); allenai/elastic models/densenet.py",
                            note="the README's 19.48M counts BN too (architectures.md 3.2); our GFLOPs are "
                                 "2.7% under 8.77, a gap architectures.md 3.2 also leaves unexplained"),
    ),
    # Reconstruction (architectures.md 3.3: no definition anywhere). Fusion first, gamma 0.5, pool
    # before the transition, CSP on stages 2-4 (the first stays plain), the subset chosen by the
    # paper's figures as for csppeleenet. Measured at 224 (params M / GFLOPs, vs 20.17 / 7.13; change
    # vs densenet201_elastic, paper +3.5% / -18.7%):
    #   stages 2-4  19.771 / 7.014 (-2.0% / -1.6%; +1.5% / -17.8%)   <- chosen
    #   all four    19.729 / 6.854 (-2.2% / -3.9%; +1.3% / -19.7%)   GFLOPs over 3% under
    #   stages 3-4  20.020 / 7.255 (-0.7% / +1.8%; +2.8% / -15.0%)   relative change 3.7 points off
    #   stages 1-3  18.110 / 6.693 (-10.2% / -6.1%)                  the 7x7 stage holds the params
    "cspdensenet201_elastic": DenseNetCfg(
        _stages((192, 416, 848, None), "first", depths=_E201, elastic=True, csp_stages=(1, 2, 3)), **_ELASTIC,
        pool_position="before_transition", csp_stages=(1, 2, 3),
        reference=Reference(20.17, 7.13, 224, top1=77.9, top5=94.0, tolerance=0.03,
                            source="paper Table 3 (CSPDenseNet-201-Elastic); structure reconstructed",
                            note="fusion first, gamma 0.5, pool before the transition, CSP on stages 2-4: "
                                 "19.77 M / 7.01 GFLOPs (-2.0% / -1.6%); -17.8% GFLOPs and +1.5% params vs "
                                 "densenet201_elastic, paper -18.7% / +3.5%. CSP on all four stages gives "
                                 "6.85 GFLOPs (-3.9%), on stages 3-4 7.26 (+1.8%) but -15.0% vs the baseline"),
    ),
    "densenet_tiny": DenseNetCfg(
        _stages((32, 48, 64, None), depths=(2, 2, 2, 2)), growth=8, bottleneck_chs=16, stem_chs=16,
    ),
    "cspdensenet_tiny": DenseNetCfg(
        _stages((32, 48, 64, None), "first", depths=(2, 2, 2, 2)), growth=8, bottleneck_chs=16, stem_chs=16,
        pool_position="before_transition",
    ),
}


DOCS = {
    "densenet201": "DenseNet-201 as darknet builds it (densenet201.cfg)",
    "cspdensenet201": "CSPDenseNet-201 on the darknet DenseNet-201, reconstructed",
    "densenet201_elastic": "DenseNet-201-Elastic (allenai/elastic), paper Table 3",
    "cspdensenet201_elastic": "CSPDenseNet-201-Elastic, reconstructed, paper Table 3",
    "timm_densenet201": "timm's densenet201 structure (torchvision), loads timm weights",
    "densenet_tiny": "densenet201 scaled down for tests and demos",
    "cspdensenet_tiny": "cspdensenet201 scaled down for tests and demos",
}
