"""ResNet / ResNeXt and their CSP versions, as the darknet cfgs and as timm build them.

darknet's ResNet-50 and ResNeXt-50 (``resnet50.cfg``, ``resnext50.cfg``) are not torchvision's: no
projection shortcuts (the shortcut is darknet's strided, channel-partial add), leaky ReLU, a 2x2
max-pool stem, and a classifier conv applied before the global pool in ``resnet50.cfg``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from ..csp import BlockStack, CrossStagePartial
from ..layers import ConvBnAct, ConvPoolStem, make_act, partial_add
from .classifier import Classifier
from .config import Reference, config_type
from .stages import chain_stages


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, strided) -> 1x1 linear, plus the shortcut, then the activation.

    ``shortcut="partial"`` is darknet's parameter-free add (strided and over the common channels
    when shapes differ); ``"projection"`` is torchvision's 1x1 conv + BN when they do.
    """

    def __init__(self, in_chs, out_chs, mid_chs, stride=1, groups=1, act="leaky", shortcut="partial"):
        super().__init__()
        self.conv1 = ConvBnAct(in_chs, mid_chs, 1, act=act)
        self.conv2 = ConvBnAct(mid_chs, mid_chs, 3, stride, groups=groups, act=act)
        self.conv3 = ConvBnAct(mid_chs, out_chs, 1, act=None)
        project = shortcut == "projection" and (in_chs != out_chs or stride > 1)
        self.shortcut = ConvBnAct(in_chs, out_chs, 1, stride, act=None) if project else None
        self.act = make_act(act)

    def forward(self, x):
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(partial_add(y, x if self.shortcut is None else self.shortcut(x)))


class BasicBlock(nn.Module):
    """3x3 (strided) -> 3x3 linear, plus the shortcut, then the activation (ResNet-10/18)."""

    def __init__(self, in_chs, out_chs, mid_chs=None, stride=1, groups=1, act="leaky", shortcut="partial"):
        super().__init__()
        mid_chs = out_chs if mid_chs is None else mid_chs
        self.conv1 = ConvBnAct(in_chs, mid_chs, 3, stride, groups=groups, act=act)
        self.conv2 = ConvBnAct(mid_chs, out_chs, 3, groups=groups, act=None)
        project = shortcut == "projection" and (in_chs != out_chs or stride > 1)
        self.shortcut = ConvBnAct(in_chs, out_chs, 1, stride, act=None) if project else None
        self.act = make_act(act)

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return self.act(partial_add(y, x if self.shortcut is None else self.shortcut(x)))


BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}


@config_type
@dataclass(frozen=True)
class ResStage:
    """One stage. ``bottle_ratio``: 3x3 width / block width. ``expand_ratio``: width of the CSP
    concatenation / ``out_chs``. ``down="block"`` strides the first block (ResNet); ``"conv"`` adds a
    3x3 base layer (every CSP cfg). ``split_act="linear"`` is darknet's linear split convs
    (``csresnext50.cfg`` layers 21/23, timm's ``cross_linear``); ``uneven_split`` is darknet's first
    stage (layers 2-8: a 64-ch block input under a 128-ch bypass, partial first shortcut). With
    ``groups > 1`` the block part of a CSP split is rounded to whole groups (:func:`grouped_gamma`),
    so any ``gamma`` in (0, 1) builds; the built stage's ``gamma`` is the one it runs at."""

    depth: int
    out_chs: int
    stride: int = 2
    groups: int = 1
    bottle_ratio: float = 0.25
    expand_ratio: float = 1.0
    gamma: float = 0.5
    fusion: str = "none"
    down: str = "block"
    split_act: str | None = None
    uneven_split: bool = False


@config_type
@dataclass(frozen=True)
class ResNetCfg:
    """``stem="darknet"``: 7x7/2 conv + 2x2/2 max-pool; ``"torchvision"``: 3x3/2 pad-1 max-pool.
    ``split``/``concat``: the CSP layout (darknet: two 1x1 convs, blocks first; timm: one conv
    and a channel split, bypass first)."""

    stages: tuple[ResStage, ...]
    block: str = "bottleneck"
    stem: str = "darknet"
    stem_chs: int = 64
    act: str = "leaky"
    shortcut: str = "partial"
    split: str = "two_conv"
    concat: str = "blocks_first"
    fc_first: bool = False
    drop_rate: float = 0.0
    reference: Reference | None = None


def _res_blocks(cfg: ResNetCfg, st: ResStage, stride: int):
    block_cls = BLOCKS[cfg.block]

    def make_blocks(chs, in_chs=None):
        def block(i, cin, cout):
            mid = max(st.groups, int(round(cout * st.bottle_ratio)))
            return block_cls(cin, cout, mid, stride if i == 0 else 1, st.groups, cfg.act, cfg.shortcut)

        return BlockStack(block, chs, st.depth, in_chs)

    return make_blocks


def grouped_gamma(gamma, hidden_chs: int, groups: int, stage: int):
    """The gamma a grouped (ResNeXt) CSP stage runs at: its block part rounded to the nearest
    multiple of ``groups`` (at least one group, leaving at least one bypass channel), so that any
    gamma in (0, 1) builds. The paper's gammas already give whole groups and are returned as is.
    Anything but a number in (0, 1) is returned unchanged for CrossStagePartial to reject."""
    if groups == 1 or isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < 1:
        return gamma
    part = hidden_chs - int(round(gamma * hidden_chs))
    if part % groups == 0 and 0 < part < hidden_chs:
        return gamma
    most = (hidden_chs - 1) // groups * groups
    if most < groups:
        raise ValueError(
            f"stage {stage}: gamma={gamma} cannot split {hidden_chs} channels into a bypass and whole groups "
            f"of {groups}: with groups={groups} a stage needs at least {groups + 1} channels"
        )
    part = min(most, max(groups, int(part / groups + 0.5) * groups))
    return (hidden_chs - part) / hidden_chs


def build_resnet(cfg: ResNetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.block not in BLOCKS:
        raise ValueError(f"block={cfg.block!r} is not allowed; choose one of {', '.join(BLOCKS)}")
    if cfg.shortcut not in ("partial", "projection"):
        raise ValueError(f"shortcut={cfg.shortcut!r} is not allowed; choose 'partial' or 'projection'")

    def make_stage(i, st, in_chs):
        if st.down not in ("block", "conv"):
            raise ValueError(f"stage {i}: down={st.down!r} is not allowed; choose 'block' or 'conv'")
        if st.fusion != "none" and st.down == "block" and st.stride > 1:
            raise ValueError(
                f"stage {i}: fusion={st.fusion!r} needs down='conv' (a strided base layer before the split)"
            )
        hidden = int(round(st.out_chs * st.expand_ratio))
        in_block = st.down == "block"  # the first block strides, not a base layer
        stage = CrossStagePartial(
            in_chs, st.out_chs, _res_blocks(cfg, st, st.stride if in_block else 1),
            stride=1 if in_block else st.stride, down_groups=st.groups, hidden_chs=hidden,
            gamma=grouped_gamma(st.gamma, hidden, st.groups, i) if st.fusion != "none" else st.gamma,
            fusion=st.fusion, split=cfg.split, concat=cfg.concat, act=cfg.act, split_act=st.split_act,
            block_in_chs=in_chs if st.uneven_split else None,
        )
        return stage, st.stride

    stem = ConvPoolStem(in_chans, cfg.stem_chs, cfg.stem, cfg.act)
    return chain_stages(stem, 4, cfg.stages, make_stage, num_classes, fc_first=cfg.fc_first, drop_rate=cfg.drop_rate)


def _stages(depths, outs, **kw):
    strides = (1,) + (2,) * (len(depths) - 1)
    return tuple(ResStage(d, o, s, **kw) for d, o, s in zip(depths, outs, strides, strict=True))


def _csp_stages(depths, outs, groups, bottle, expand, darknet_split_act):
    """darknet csresnet50/csresnext50: linear split convs in stages 2-3 only (layers 21/23, 40/42);
    leaky in stage 1 (2/4) and 4 (67/69). timm makes all of them linear."""
    stages = []
    for i, (d, o) in enumerate(zip(depths, outs, strict=True)):
        linear = (i in (1, 2)) if darknet_split_act else True
        stages.append(ResStage(
            d, o, 1 if i == 0 else 2, groups, bottle, expand, fusion="full", down="conv",
            split_act="linear" if linear else None, uneven_split=darknet_split_act and i == 0,
        ))
    return tuple(stages)


_R50 = (3, 4, 6, 3)
_CSP50 = (3, 3, 5, 2)
_WIDE = (256, 512, 1024, 2048)

CFGS = {
    "resnet50": ResNetCfg(
        _stages(_R50, _WIDE, bottle_ratio=0.25), fc_first=True,
        reference=Reference(22.78, 9.999, 256, weights=22.73, top1=75.8, top5=92.9,
                            source="darknet-cfg/resnet50.cfg; INDEX.md cross-check",
                            note="README says 9.74 BFLOPs: the cfg's classifier conv runs at 8x8 before the pool"),
    ),
    "resnext50": ResNetCfg(
        _stages(_R50, _WIDE, groups=32, bottle_ratio=0.5),
        reference=Reference(22.25, 10.110, 256, weights=22.19, top1=77.8, top5=94.2,
                            source="darknet-cfg/resnext50.cfg; INDEX.md cross-check; paper Table 3"),
    ),
    "cspresnet50": ResNetCfg(
        _csp_stages(_CSP50, (128, 256, 512, 1024), 1, 0.5, 2.0, True),
        reference=Reference(21.61, 8.967, 256, weights=21.57, top1=76.6, top5=93.3,
                            source="darknet-cfg/csresnet50.cfg; INDEX.md cross-check"),
    ),
    "cspresnext50": ResNetCfg(
        _csp_stages(_CSP50, _WIDE, 32, 1.0, 1.0, True),
        reference=Reference(20.56, 7.929, 256, weights=20.50, top1=77.9, top5=94.0,
                            source="darknet-cfg/csresnext50.cfg; INDEX.md cross-check; paper Table 3"),
    ),
    "resnet10": ResNetCfg(
        _stages((1, 1, 1, 1), (64, 128, 256, 512), bottle_ratio=1.0), block="basic",
        reference=Reference(5.24, 2.272, 256, weights=5.24, top1=63.5, top5=85.0,
                            source="darknet-cfg/resnet10.cfg; INDEX.md cross-check; paper Table 3"),
    ),
    # timm's structures (torchvision ResNet; timm CrossStage), for exact weight import
    "timm_resnet50": ResNetCfg(
        _stages(_R50, _WIDE, bottle_ratio=0.25), stem="torchvision", act="relu", shortcut="projection",
    ),
    "timm_resnext50_32x4d": ResNetCfg(
        _stages(_R50, _WIDE, groups=32, bottle_ratio=0.5), stem="torchvision", act="relu",
        shortcut="projection",
    ),
    "timm_cspresnet50": ResNetCfg(
        _csp_stages(_CSP50, (128, 256, 512, 1024), 1, 0.5, 2.0, False), stem="torchvision",
        act="leaky_relu", split="conv", concat="bypass_first",
    ),
    "timm_cspresnext50": ResNetCfg(
        _csp_stages(_CSP50, _WIDE, 32, 1.0, 1.0, False), stem="torchvision", act="leaky_relu",
        split="conv", concat="bypass_first",
    ),
}


def _tiny(cfg: ResNetCfg) -> ResNetCfg:
    """Width/8, one block per stage, at most 8 groups: for tests and CPU demos."""
    stages = tuple(
        replace(st, depth=1, out_chs=st.out_chs // 8, groups=min(st.groups, 8)) for st in cfg.stages
    )
    return replace(cfg, stages=stages, stem_chs=16, reference=None)


CFGS.update({
    "resnet_tiny": _tiny(CFGS["resnet50"]),
    "cspresnet_tiny": _tiny(CFGS["cspresnet50"]),
    "resnext_tiny": _tiny(CFGS["resnext50"]),
    "cspresnext_tiny": _tiny(CFGS["cspresnext50"]),
})


DOCS = {
    "resnet50": "ResNet-50 as darknet builds it (resnet50.cfg): no projection shortcuts",
    "resnext50": "ResNeXt-50 32x4d as darknet builds it (resnext50.cfg), paper Table 3",
    "cspresnet50": "CSPResNet-50 (csresnet50.cfg)",
    "cspresnext50": "CSPResNeXt-50 (csresnext50.cfg), paper Table 3",
    "resnet10": "ResNet-10 (resnet10.cfg), paper Table 3",
    "timm_resnet50": "timm's resnet50 structure (torchvision ResNet-50), loads timm weights",
    "timm_resnext50_32x4d": "timm's resnext50_32x4d structure, loads timm weights",
    "timm_cspresnet50": "timm's cspresnet50 structure, loads timm weights",
    "timm_cspresnext50": "timm's cspresnext50 structure, loads timm weights",
    "resnet_tiny": "resnet50 scaled down (width/8, depth 1) for tests and demos",
    "cspresnet_tiny": "cspresnet50 scaled down for tests and demos",
    "resnext_tiny": "resnext50 scaled down for tests and demos",
    "cspresnext_tiny": "cspresnext50 scaled down for tests and demos",
}
