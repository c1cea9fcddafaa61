"""Darknet-53 and CSPDarknet-53 (``darknet53.cfg``, ``csdarknet53.cfg``, the Mish "omega" cfg),
timm's structures of them, and the Darknet Reference model (``darknet.cfg``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from ..csp import BlockStack, CrossStagePartial
from ..layers import ConvBnAct, PoolConv, partial_add
from .classifier import Classifier, stage_feature_info
from .config import Reference, config_type
from .stages import chain_stages


class DarkBlock(nn.Module):
    """1x1 -> 3x3, plus the input; no activation after the add (``[shortcut] activation=linear``)."""

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, act: str = "leaky"):
        super().__init__()
        self.conv1 = ConvBnAct(in_chs, mid_chs, 1, act=act)
        self.conv2 = ConvBnAct(mid_chs, out_chs, 3, act=act)

    def forward(self, x):
        return partial_add(self.conv2(self.conv1(x)), x)


@config_type
@dataclass(frozen=True)
class DarkStage:
    """A stride-2 3x3 conv to ``out_chs`` then ``depth`` blocks. ``bottle_ratio``: 1x1 width /
    block width; ``expand_ratio``: CSP concatenation width / ``out_chs`` (2 in CSPDarknet-53's
    first stage, ``csdarknet53.cfg`` layers 2-10)."""

    depth: int
    out_chs: int
    stride: int = 2
    bottle_ratio: float = 0.5
    expand_ratio: float = 1.0
    gamma: float = 0.5
    fusion: str = "none"


@config_type
@dataclass(frozen=True)
class DarknetCfg:
    stages: tuple[DarkStage, ...]
    stem_chs: int = 32
    act: str = "leaky"
    split: str = "two_conv"
    concat: str = "blocks_first"
    drop_rate: float = 0.0
    reference: Reference | None = None


def build_darknet(cfg: DarknetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    def make_stage(i, st, in_chs):
        def make_blocks(chs, in_chs=None):
            mid = max(1, int(round(chs * st.bottle_ratio)))
            return BlockStack(lambda i, cin, cout: DarkBlock(cin, cout, mid, cfg.act), chs, st.depth, in_chs)

        stage = CrossStagePartial(
            in_chs, st.out_chs, make_blocks, stride=st.stride, down_chs=st.out_chs, gamma=st.gamma,
            fusion=st.fusion, split=cfg.split, concat=cfg.concat, hidden_chs=int(round(st.out_chs * st.expand_ratio)),
            act=cfg.act,
        )
        return stage, st.stride

    stem = ConvBnAct(in_chans, cfg.stem_chs, 3, act=cfg.act)
    return chain_stages(stem, 1, cfg.stages, make_stage, num_classes, drop_rate=cfg.drop_rate)


@config_type
@dataclass(frozen=True)
class DarknetRefCfg:
    """pjreddie's Darknet Reference model: 3x3 convs, each but the last followed by a 2x2/2
    max-pool; the baseline of the paper's "Ref." backbones. The YOLOv3-tiny backbones are the same
    layout: ``last_stride=1`` keeps the last stage at stride 32 (a 2x2/1 pool, ``yolov3-tiny.cfg``
    layer 11), and ``last_residual`` adds the last stage's input to its output (``yolov3-tiny-prn.cfg``
    layers 11-13)."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    act: str = "leaky"
    last_stride: int = 2
    last_residual: bool = False
    drop_rate: float = 0.0
    reference: Reference | None = None


def build_darknet_ref(cfg: DarknetRefCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.last_stride not in (1, 2):
        raise ValueError(f"last_stride={cfg.last_stride!r} is not allowed; choose 1 or 2")
    stem = ConvBnAct(in_chans, cfg.widths[0], 3, act=cfg.act)
    n = len(cfg.widths) - 1
    strides = [2] * (n - 1) + [cfg.last_stride]
    stages = [PoolConv(a, b, cfg.act, s, residual=cfg.last_residual and i == n - 1)
              for i, (a, b, s) in enumerate(zip(cfg.widths[:-1], cfg.widths[1:], strides, strict=True))]
    info = stage_feature_info(cfg.widths[0], 1, list(zip(cfg.widths[1:], strides, strict=True)))
    return Classifier(stem, stages, info, num_classes, drop_rate=cfg.drop_rate)


_DEPTHS = (1, 2, 8, 8, 4)
_WIDTHS = (64, 128, 256, 512, 1024)


def _darknet53(fusion: str = "none") -> tuple[DarkStage, ...]:
    if fusion == "none":
        return tuple(DarkStage(d, w) for d, w in zip(_DEPTHS, _WIDTHS, strict=True))
    # csdarknet53.cfg: the first stage keeps 64 channels on both paths (expand 2, 1x1 of 32 in the
    # block); later stages halve them (expand 1, block 1x1 at the full block width)
    return tuple(
        DarkStage(d, w, 2, 0.5 if i == 0 else 1.0, 2.0 if i == 0 else 1.0, fusion=fusion)
        for i, (d, w) in enumerate(zip(_DEPTHS, _WIDTHS, strict=True))
    )


_CSPDARKNET53_REF = Reference(
    27.64, 13.067, 256, weights=27.61, top1=77.2, top5=93.6,
    source="darknet-cfg/csdarknet53.cfg; INDEX.md cross-check",
)

CFGS = {
    "darknet53": DarknetCfg(
        _darknet53(),
        reference=Reference(41.61, 18.570, 256, weights=41.57, top1=77.2, top5=93.8,
                            source="darknet-cfg/darknet53.cfg; INDEX.md cross-check"),
    ),
    "cspdarknet53": DarknetCfg(_darknet53("full"), reference=_CSPDARKNET53_REF),
    "cspdarknet53_mish": DarknetCfg(
        _darknet53("full"), act="mish",
        reference=replace(_CSPDARKNET53_REF, top1=78.7, top5=94.8,
                          source="darknet-cfg/csdarknet53-omega.cfg (= csdarknet53.cfg with Mish); "
                                 "imagenet/results.md (CutMix+Mosaic+LS+Mish)"),
    ),
    "timm_darknet53": DarknetCfg(_darknet53(), act="leaky_relu"),
    "timm_cspdarknet53": DarknetCfg(_darknet53("full"), act="leaky_relu", split="conv", concat="bypass_first"),
    "darknet_tiny": DarknetCfg(tuple(DarkStage(1, w // 8) for w in _WIDTHS), stem_chs=8),
    "cspdarknet_tiny": DarknetCfg(
        tuple(replace(st, depth=1, out_chs=st.out_chs // 8) for st in _darknet53("full")), stem_chs=8
    ),
}

REF_CFGS = {
    "darknet_ref": DarknetRefCfg(
        reference=Reference(7.32, 0.965, 256, weights=7.31, top1=61.1, top5=83.0,
                            source="darknet-cfg/darknet.cfg; INDEX.md cross-check; paper Table 3 (Darknet Ref.)"),
    ),
}


DOCS = {
    "darknet53": "Darknet-53 (darknet53.cfg)",
    "cspdarknet53": "CSPDarknet-53 (csdarknet53.cfg)",
    "cspdarknet53_mish": "CSPDarknet-53 with Mish (csdarknet53-omega.cfg, the YOLOv4 backbone)",
    "timm_darknet53": "timm's darknet53 structure, loads timm weights",
    "timm_cspdarknet53": "timm's cspdarknet53 structure, loads timm weights",
    "darknet_tiny": "darknet53 scaled down (width/8, depth 1) for tests and demos",
    "cspdarknet_tiny": "cspdarknet53 scaled down for tests and demos",
    "darknet_ref": "Darknet Reference (darknet.cfg), baseline of the Ref. backbones",
}
