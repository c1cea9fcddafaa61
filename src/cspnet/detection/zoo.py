"""The detector zoo: one config type for every detector (a zoo backbone, a neck, YOLO outputs) and
the paper's detectors as named configs, registered with ``cspnet.create_model``/``list_models``.

Where a cfg exists the config follows it exactly (the backbone's feature levels the cfg's routes
read, the neck's widths, the anchors and masks); ``cspnet convert --from darknet`` maps the cfg's
weights onto the native model and checks that both give the same raw outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..models import create_model
from ..models.config import Reference, apply_overrides, config_type
from ..models.registry import get_entry, register_provider
from .detector import Detector
from .fusion import EFM, GFM, AttentionNeck
from .necks import FPN, PRN, PANet
from .yolo_decode import YoloHead

NECKS = ("panet", "fpn", "prn", "efm", "gfm")
ATTENTIONS = ("none", "sam")
YOLOV3_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))


@config_type
@dataclass(frozen=True)
class DetectorCfg:
    """``backbone``: a registered model, built with ``features_only=True, out_indices=out_indices``
    (its levels fine to coarse) and ``backbone_args`` as overrides. ``neck``: ``panet``, ``fpn``,
    ``prn``, ``efm`` or ``gfm``, one conv width per level (``widths``), ``spp`` on the coarsest level
    (not PRN), ``depth`` convs per step (``top_depth`` on the coarsest; PANet, FPN). EFM/GFM only:
    ``maxout``, the channel-max group applied to each feature before the fusion (1: none), ``down``
    (``pool`` or ``conv``), how a finer level is reduced. ``attention="sam"``: darknet's ``[sam]`` on
    every neck output before its head. ``head_conv``: a 3x3 conv of twice the level's width before
    each prediction (the PRN heads have none). ``masks[i]``: the anchors of level ``i``
    (fine to coarse); ``scale_x_y`` likewise (empty: 1). ``img_size``: what ``predict`` letterboxes
    to. A ``--set`` key that is not a field here is passed to the backbone (``fusion=none``)."""

    backbone: str
    out_indices: tuple[int, ...]
    neck: str = "panet"
    widths: tuple[int, ...] = (128, 256, 512)
    spp: bool = True
    depth: int = 5
    top_depth: int | None = None
    head_conv: bool = True
    attention: str = "none"
    maxout: int = 2
    down: str = "pool"
    anchors: tuple[tuple[float, float], ...] = YOLOV3_ANCHORS
    masks: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
    scale_x_y: tuple[float, ...] = ()
    img_size: int = 416
    act: str = "leaky"
    backbone_args: tuple[tuple[str, Any], ...] = ()
    reference: Reference | None = None

    def used_anchors(self, anchors=None) -> list:
        """The anchors the outputs use, in mask order (a tiny cfg's anchor 0 is listed but unused);
        of ``anchors`` instead of the config's when given (candidates for the same masks)."""
        anchors = self.anchors if anchors is None else anchors
        return [anchors[a] for m in self.masks for a in m]

    def override(self, overrides: dict) -> DetectorCfg:
        """Fields of the detector are set; any other key is a backbone override (checked against the
        backbone's config now, so a typo fails here). The reference figures no longer apply."""
        own = {f.name for f in fields(self)}
        mine = {k: v for k, v in overrides.items() if k in own}
        theirs = {k: v for k, v in overrides.items() if k not in own}
        if theirs:
            apply_overrides(get_entry(self.backbone).cfg, {**dict(self.backbone_args), **theirs})
            mine["backbone_args"] = tuple({**dict(self.backbone_args), **theirs}.items())
        if not mine:
            return self
        return replace(self, **mine, reference=mine.get("reference"))


def detector_cfg(name: str) -> DetectorCfg:
    """The registered detector's config; a ValueError when ``name`` is another kind of model."""
    cfg = get_entry(name).cfg
    if not isinstance(cfg, DetectorCfg):
        raise ValueError(f"{name} is not a detector; `cspnet list` names them")
    return cfg


def _base_neck(cfg: DetectorCfg, in_chs: list[int]):
    widths = list(cfg.widths)
    if cfg.neck == "panet":
        return PANet(in_chs, widths, cfg.spp, cfg.depth, cfg.act)
    if cfg.neck == "fpn":
        return FPN(in_chs, widths, cfg.spp, cfg.depth, cfg.top_depth, cfg.act)
    if cfg.neck == "prn":
        return PRN(in_chs, widths, cfg.act)
    if cfg.neck in ("efm", "gfm"):
        kind = EFM if cfg.neck == "efm" else GFM
        return kind(in_chs, widths, maxout=cfg.maxout, down=cfg.down, spp=cfg.spp, depth=cfg.depth, act=cfg.act)
    raise ValueError(f"neck={cfg.neck!r} is not allowed; choose one of {', '.join(NECKS)}")


def _neck(cfg: DetectorCfg, in_chs: list[int]):
    if cfg.attention not in ATTENTIONS:
        raise ValueError(f"attention={cfg.attention!r} is not allowed; choose one of {', '.join(ATTENTIONS)}")
    neck = _base_neck(cfg, in_chs)
    return AttentionNeck(neck) if cfg.attention == "sam" else neck


def build_detector(cfg: DetectorCfg, num_classes: int = 80, in_chans: int = 3) -> Detector:
    if len(cfg.masks) != len(cfg.out_indices) or len(cfg.widths) != len(cfg.out_indices):
        raise ValueError(f"a detector on {len(cfg.out_indices)} feature levels needs as many widths and masks; got "
                         f"widths={cfg.widths}, masks={cfg.masks}")
    if cfg.scale_x_y and len(cfg.scale_x_y) != len(cfg.masks):
        raise ValueError(f"scale_x_y={cfg.scale_x_y} needs one value per level ({len(cfg.masks)})")
    bad = [a for m in cfg.masks for a in m if not 0 <= a < len(cfg.anchors)]
    if bad:
        raise ValueError(f"masks={cfg.masks} name anchor {bad[0]}, but there are {len(cfg.anchors)} anchors")
    backbone = create_model(cfg.backbone, in_chans=in_chans, features_only=True, out_indices=cfg.out_indices,
                            **dict(cfg.backbone_args))
    neck = _neck(cfg, backbone.channels())
    levels = neck.output_levels()
    scales = cfg.scale_x_y or (1.0,) * len(cfg.masks)
    heads = [YoloHead(tuple(tuple(map(float, cfg.anchors[a])) for a in cfg.masks[i]), num_classes, float(scales[i]))
             for i in levels]
    mid = [2 * cfg.widths[i] if cfg.head_conv else None for i in levels]
    strides = [backbone.reductions()[i] for i in levels]
    return Detector(backbone, neck, heads, strides, mid, cfg.img_size, cfg.act)


_TINY_MASKS = ((1, 2, 3), (3, 4, 5))  # as the tiny cfgs write them: anchor 0 unused, anchor 3 shared
_DARKNET_REF_TINY = (("last_stride", 1),)


def _cfg_ref(weights: float, params: float, gflops: float, cfg: str, note: str = "") -> Reference:
    return Reference(params, gflops, 416, weights=weights, source=f"darknet-cfg/{cfg}; INDEX.md cross-check",
                     note=note)


_EFM = DetectorCfg("csppeleenet", (1, 2, 4), neck="efm", widths=(64, 128, 256), spp=False, depth=1, img_size=320)


def _prn(backbone: str, levels: tuple[int, ...], reference: Reference | None = None) -> DetectorCfg:
    """A PRN detector at 320: two levels as yolov3-tiny-prn (widths 128, 256; its 6 anchors), or
    three ("PRN (3l)": widths 128, 128, 256, fitted to Pelee-PRN-3l; YOLOv3's 9 anchors)."""
    two = len(levels) == 2
    return DetectorCfg(backbone, levels, neck="prn", widths=(128, 256) if two else (128, 128, 256), spp=False,
                       head_conv=False, anchors=TINY_ANCHORS if two else YOLOV3_ANCHORS,
                       masks=_TINY_MASKS if two else ((0, 1, 2), (3, 4, 5), (6, 7, 8)), img_size=320,
                       reference=reference)


def _prn_ref(weights: float, gflops: float, size: int, note: str) -> Reference:
    return Reference(None, gflops, size, weights=weights, tolerance=0.03, note=note,
                     source="PartialResidualNetworks README (arch. 5.5); docs/reconstructions-detection.md")


CFGS = {
    # csresnext50-panet-spp.cfg: taps 38 / 65 / 80 = the stages at strides 8 / 16 / 32
    "cspresnext50_panet_spp": DetectorCfg(
        "cspresnext50", (2, 3, 4),
        reference=_cfg_ref(56.85, 56.94, 47.063, "csresnext50-panet-spp.cfg",
                           "71.291 BFLOPs at 512 (INDEX.md); paper Table 4: 38.4 AP at 512"),
    ),
    "cspresnet50_panet_spp": DetectorCfg(
        "cspresnet50", (2, 3, 4), reference=_cfg_ref(58.26, 58.33, 49.278, "csresnet50-panet-spp.cfg"),
    ),
    # csdarknet53-panet-spp.cfg: taps 54 / 85 / 104 (CSPDarknet-53's stages 3-5)
    "cspdarknet53_panet_spp": DetectorCfg(
        "cspdarknet53", (3, 4, 5), reference=_cfg_ref(64.30, 64.36, 60.105, "csdarknet53-panet-spp.cfg"),
    ),
    # prn/yolov3-tiny.cfg: Darknet Ref.'s layout with a 2x2/1 last pool; taps 8 and 12
    "yolov3_tiny": DetectorCfg(
        "darknet_ref", (4, 6), neck="fpn", widths=(128, 256), spp=False, depth=0, top_depth=1,
        anchors=TINY_ANCHORS, masks=_TINY_MASKS, backbone_args=_DARKNET_REF_TINY,
        reference=_cfg_ref(8.85, 8.85, 5.565, "prn/yolov3-tiny.cfg", "README 5.571 BFLOPs counts the max-pools"),
    ),
    # prn/yolov3-tiny-prn.cfg: the last stage 512 wide with a residual (layers 11-13); taps 8 and 13
    "yolov3_tiny_prn": DetectorCfg(
        "darknet_ref", (4, 6), neck="prn", widths=(128, 256), spp=False, head_conv=False,
        anchors=TINY_ANCHORS, masks=_TINY_MASKS,
        backbone_args=(*_DARKNET_REF_TINY, ("widths", (16, 32, 64, 128, 256, 512, 512)), ("last_residual", True)),
        reference=_cfg_ref(4.93, 4.94, 3.461, "prn/yolov3-tiny-prn.cfg",
                           "README 4.95M / 3.467 BFLOPs: see README's darknet section"),
    ),
    # --- the paper's detectors without a cfg (docs/reconstructions-detection.md), at 320 ---
    # Table 2 (on CSPPeleeNet, levels 1 / 2 / 4 = strides 8 / 16 / 32, the last the full backbone)
    "csppeleenet_efm": _EFM,
    "csppeleenet_efm_sam": replace(_EFM, attention="sam"),
    "csppeleenet_efm_spp": replace(_EFM, spp=True),
    "csppeleenet_gfm": replace(_EFM, neck="gfm"),
    "csppeleenet_prn": _prn("csppeleenet", (2, 4)),
    # Tables 4-5: the "Ref." backbones, levels 2 / 3 / 4 = strides 8 / 16 / 32
    "csppeleenet_ref_prn3l": _prn("csppeleenet_ref", (2, 3, 4)),
    "csppeleenet_ref_efm_sam": replace(_EFM, backbone="csppeleenet_ref", out_indices=(2, 3, 4), attention="sam"),
    "cspdensenet_ref_prn": _prn("cspdensenet_ref", (3, 4)),
    "cspdensenet_b_ref_prn": _prn("cspdensenetb_ref", (3, 4)),
    # the PRN README's Pelee-PRN and Pelee-PRN-3l (PeleeNet, not CSP): the only published sizes
    "peleenet_prn": _prn("peleenet", (2, 4), reference=_prn_ref(
        3.16, 2.39, 320, "weights -0.77%, BFLOPs -0.11%; 416: 4.035 vs the README's 4.04")),
    "peleenet_prn3l": _prn("peleenet", (1, 2, 4), reference=_prn_ref(
        3.36, 5.03, 416, "weights -0.83%, BFLOPs +0.01%; the README's 320 figure, 3.98, is not its 416 one "
        "scaled (x (416/320)^2 = 6.73); ours at 320: 2.977")),
    # tiny members of each neck kind, for tests and CPU demos
    "cspresnext_tiny_panet": DetectorCfg("cspresnext_tiny", (2, 3, 4), widths=(16, 32, 64), img_size=128),
    "cspdarknet_tiny_fpn": DetectorCfg("cspdarknet_tiny", (3, 4, 5), neck="fpn", widths=(16, 32, 64), spp=False,
                                       img_size=128),
    "cspdarknet_tiny_prn": DetectorCfg("cspdarknet_tiny", (4, 5), neck="prn", widths=(32, 64), spp=False,
                                       head_conv=False, anchors=TINY_ANCHORS, masks=_TINY_MASKS, img_size=128),
    "csppeleenet_tiny_efm": replace(_EFM, backbone="csppeleenet_tiny", widths=(16, 32, 64), img_size=128),
    "csppeleenet_tiny_gfm": replace(_EFM, backbone="csppeleenet_tiny", neck="gfm", widths=(16, 32, 64), img_size=128),
    "csppeleenet_tiny_prn": replace(_prn("csppeleenet_tiny", (2, 4)), widths=(32, 64), img_size=128),
}

DOCS = {
    "cspresnext50_panet_spp": "CSPResNeXt50-PANet-SPP (csresnext50-panet-spp.cfg), paper Table 4",
    "cspresnet50_panet_spp": "CSPResNet50-PANet-SPP (csresnet50-panet-spp.cfg)",
    "cspdarknet53_panet_spp": "CSPDarknet53-PANet-SPP (csdarknet53-panet-spp.cfg)",
    "yolov3_tiny": "YOLOv3-tiny (prn/yolov3-tiny.cfg), paper Tables 4-5",
    "yolov3_tiny_prn": "YOLOv3-tiny-PRN (prn/yolov3-tiny-prn.cfg), paper Tables 4-5",
    "cspresnext_tiny_panet": "PANet-SPP detector on cspresnext_tiny, for tests and demos",
    "cspdarknet_tiny_fpn": "YOLOv3 FPN detector on cspdarknet_tiny, for tests and demos",
    "cspdarknet_tiny_prn": "PRN detector on cspdarknet_tiny, for tests and demos",
    "csppeleenet_efm": "CSPPeleeNet-EFM at 320 (no cfg; reconstructed), paper Table 2",
    "csppeleenet_efm_sam": "CSPPeleeNet-EFM (SAM) at 320 (no cfg; reconstructed), paper Tables 2 and 4",
    "csppeleenet_efm_spp": "CSPPeleeNet-EFM + SPP at 320 (no cfg; reconstructed), paper Table 2",
    "csppeleenet_gfm": "CSPPeleeNet-GFM at 320 (no cfg; reconstructed), paper Table 2",
    "csppeleenet_prn": "CSPPeleeNet-PRN at 320 (no cfg; reconstructed), paper Table 2",
    "csppeleenet_ref_prn3l": "CSPPeleeNet Ref.-PRN (3l) at 320 (no cfg; reconstructed), paper Tables 4-5",
    "csppeleenet_ref_efm_sam": "CSPPeleeNet Ref.-EFM (SAM) at 320 (no cfg; reconstructed), paper Tables 4-5",
    "cspdensenet_ref_prn": "CSPDenseNet Ref.-PRN at 320 (no cfg; reconstructed)",
    "cspdensenet_b_ref_prn": "CSPDenseNetb Ref.-PRN at 320 (no cfg; reconstructed), paper Table 5",
    "peleenet_prn": "Pelee-PRN at 320 (PRN README; no cfg, reconstructed)",
    "peleenet_prn3l": "Pelee-PRN-3l at 320 (PRN README; no cfg, reconstructed)",
    "csppeleenet_tiny_efm": "EFM detector on csppeleenet_tiny, for tests and demos",
    "csppeleenet_tiny_gfm": "GFM detector on csppeleenet_tiny, for tests and demos",
    "csppeleenet_tiny_prn": "PRN detector on csppeleenet_tiny, for tests and demos (Table 2's PRN row, tiny)",
}

register_provider(lambda: [("detector", DetectorCfg, build_detector, CFGS, DOCS)])
