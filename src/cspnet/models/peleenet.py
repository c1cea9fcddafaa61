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

from ..csp import POOL_POSITIONS, CrossStagePartial
from ..layers import AvgPool2x2, StemBlock, two_way_dense_block
from .classifier import Classifier
from .config import Reference, config_type
from .stages import chain_stages


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


def build_peleenet(cfg: PeleeNetCfg, num_classes: int = 1000, in_chans: int = 3) -> Classifier:
    if cfg.pool_position not in POOL_POSITIONS:
        raise ValueError(
            f"pool_position={cfg.pool_position!r} is not allowed; choose one of {', '.join(POOL_POSITIONS)}"
        )

    def make_stage(i, st, in_chs):
        stage = CrossStagePartial(
            in_chs, st.out_chs, two_way_dense_block(st.depth, cfg.growth, st.bottleneck_chs, cfg.act),
            gamma=st.gamma, fusion=st.fusion, split="slice", concat="bypass_first", transition="always",
            pool=AvgPool2x2(ceil_mode=True) if st.pool else None, act=cfg.act,
            pool_position=cfg.pool_position if st.fusion != "none" else "end",  # PeleeNet pools last
        )
        return stage, 2 if st.pool else 1

    stem = StemBlock(in_chans, cfg.stem_chs, cfg.act)
    return chain_stages(stem, 4, cfg.stages, make_stage, num_classes, cfg.csp_stages, drop_rate=cfg.drop_rate)


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
