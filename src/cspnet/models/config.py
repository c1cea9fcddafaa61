"""Model configs: frozen dataclasses with one row per stage, their reference figures, and the
generic operations on them (overrides, width/depth scaling, JSON round trip)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Reference:
    """Published figures a model must reproduce, and where they come from.

    ``params`` counts everything (``sum(p.numel())``: conv, BN affine, biases); ``weights`` counts
    conv/fc weights only, the CSPNet README's "#Parameter". ``gflops`` = 2 x multiply-adds
    (darknet's BFLOPs) at ``img_size``.
    ``tolerance`` is the relative error the tests allow (0.5% for cfg models, 3% for
    reconstructions).
    """

    params: float | None  # millions, conv + BN + biases
    gflops: float
    img_size: int = 256
    weights: float | None = None  # millions, conv/fc weights only
    top1: float | None = None
    top5: float | None = None
    source: str = ""
    tolerance: float = 0.005
    note: str = ""


_CONFIG_TYPES: dict[str, type] = {}


def config_type(cls):
    """Class decorator: a model config that can be rebuilt from its JSON form."""
    _CONFIG_TYPES[cls.__name__] = cls
    return cls


def to_dict(cfg) -> dict[str, Any]:
    """JSON-able form of a config (nested dataclasses and tuples included)."""

    def conv(v):
        if is_dataclass(v):
            d = {f.name: conv(getattr(v, f.name)) for f in fields(v)}
            d["__type__"] = type(v).__name__
            return d
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def from_dict(data: dict[str, Any]):
    """Inverse of :func:`to_dict`."""

    def conv(v):
        if isinstance(v, dict) and "__type__" in v:
            name = v["__type__"]
            if name == "Reference":
                cls = Reference
            elif name in _CONFIG_TYPES:
                cls = _CONFIG_TYPES[name]
            else:
                raise ValueError(f"unknown config type {name!r} in checkpoint metadata")
            known = {f.name for f in fields(cls)}
            kwargs = {k: conv(x) for k, x in v.items() if k != "__type__" and k in known}
            return cls(**kwargs)
        if isinstance(v, list):
            return tuple(conv(x) for x in v)
        return v

    return conv(data)


def _stage_fields(cfg) -> set[str]:
    stages = getattr(cfg, "stages", ())
    return {f.name for f in fields(stages[0])} if stages else set()


def apply_overrides(cfg, overrides: dict[str, Any]):
    """Replace fields of a model config; a stage field (``gamma``, ``fusion``, ...) is set on every
    stage that ``csp_overridable`` allows. Unknown names raise ValueError listing what is allowed.

    ``width_mult=``/``depth_mult=`` scale the result (:func:`scale_config`).
    Any override that changes the architecture drops the reference figures, which no longer apply.
    """
    if not overrides:
        return cfg
    if any(k in overrides for k in SCALE_KEYS) and not hasattr(cfg, "override"):
        rest = {k: v for k, v in overrides.items() if k not in SCALE_KEYS}
        return scale_config(apply_overrides(cfg, rest), overrides.get("width_mult", 1.0),
                            overrides.get("depth_mult", 1.0))
    if hasattr(cfg, "override"):  # a config that routes some keys elsewhere (a detector: to its backbone)
        return cfg.override(overrides)
    top = {f.name for f in fields(cfg)}
    stage_names = _stage_fields(cfg)
    unknown = [k for k in overrides if k not in top and k not in stage_names]
    if unknown:
        allowed = sorted((top | stage_names | set(SCALE_KEYS)) - {"stages", "reference"})
        raise ValueError(f"unknown option {unknown[0]!r} for this model; allowed: {', '.join(allowed)}")
    top_over = {k: v for k, v in overrides.items() if k in top and k not in stage_names}
    stage_over = {k: v for k, v in overrides.items() if k in stage_names}
    if stage_over:
        mask = overrides.get("csp_stages", getattr(cfg, "csp_stages", None))
        new_stages = []
        for i, st in enumerate(cfg.stages):
            if mask is not None and i not in mask and set(stage_over) <= {"gamma", "fusion"}:
                new_stages.append(st)
            else:
                new_stages.append(replace(st, **stage_over))
        top_over["stages"] = tuple(new_stages)
    changed = any(getattr(cfg, k) != v for k, v in top_over.items())
    cfg = replace(cfg, **top_over)
    if changed and "reference" in top and "reference" not in overrides:
        cfg = replace(cfg, reference=None)
    return cfg


def _round_channels(chs: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(math.ceil(chs / divisor - 1e-9)) * divisor)


def scale_stages(stages, width: float, depth: float, divisor: int = 8, chs_fields=("out_chs",)):
    """Width/depth-scaled copy of a stage tuple, for the tiny test/demo members of a family."""
    out = []
    for st in stages:
        changes = {"depth": max(1, int(round(st.depth * depth)))}
        for name in chs_fields:
            value = getattr(st, name)
            if value:
                changes[name] = _round_channels(value * width, divisor)
        out.append(replace(st, **changes))
    return tuple(out)


SCALE_KEYS = ("width_mult", "depth_mult")  # override keys that scale a config (:func:`scale_config`)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _channel_fields(obj, where: str):
    """(label, value) of every channel count of a config row: ``*_chs``, ``growth``, ``widths``."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool):
            continue
        if (f.name.endswith("_chs") or f.name == "growth") and isinstance(value, int) and value > 0:
            yield f"{where}{f.name}", value
        elif f.name == "widths" and isinstance(value, tuple):
            yield from ((f"{where}{f.name}[{i}]", v) for i, v in enumerate(value))


def _scale_fields(obj, width: float, depth: float):
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or f.name in ("stages", "reference"):
            continue
        if (f.name.endswith("_chs") or f.name == "growth") and isinstance(value, int) and value > 0:
            changes[f.name] = _round_half_up(value * width)
        elif f.name == "widths" and isinstance(value, tuple):
            changes[f.name] = tuple(_round_half_up(v * width) for v in value)
        elif f.name == "groups" and isinstance(value, int) and value > 1:
            changes[f.name] = max(1, _round_half_up(value * width))  # keep the width of a group, not their number
        elif f.name == "depth" and isinstance(value, int):
            changes[f.name] = max(1, _round_half_up(value * depth))
    return replace(obj, **changes) if changes else obj


def scale_config(cfg, width: float = 1.0, depth: float = 1.0):
    """The same architecture at another size: every channel count (``*_chs``, ``growth``,
    ``widths``) times ``width``, rounded to whole channels, every stage's block count times
    ``depth`` (at least one), grouped convs keeping their group width. Gamma, fusion and the layout
    stay, so an ablation can shrink a baseline and all its CSP variants alike. A channel count that
    would round to zero is a ValueError naming the smallest ``width`` that keeps it; the reference
    figures are dropped unless both factors are 1. Also reachable as the overrides
    ``width_mult=``/``depth_mult=`` of :func:`apply_overrides` (``create_model``, ``--set``)."""
    for name, value in (("width_mult", width), ("depth_mult", depth)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}={value!r} must be a number > 0")
    if width == 1 and depth == 1:
        return cfg
    stages = getattr(cfg, "stages", ())
    counts = [*_channel_fields(cfg, ""),
              *(c for i, st in enumerate(stages) for c in _channel_fields(st, f"stage {i} "))]
    if counts:
        where, smallest = min(counts, key=lambda c: c[1])
        if _round_half_up(smallest * width) < 1:
            least = math.ceil(0.5 / smallest * 1000) / 1000
            raise ValueError(f"width_mult={width:g} rounds {where} ({smallest}) to 0 channels; "
                             f"use width_mult >= {least:g}")
    out = _scale_fields(cfg, width, depth)
    if stages:
        out = replace(out, stages=tuple(_scale_fields(st, width, depth) for st in stages))
    if "reference" in {f.name for f in fields(cfg)}:
        out = replace(out, reference=None)
    return out


__all__ = [
    "SCALE_KEYS",
    "Reference",
    "apply_overrides",
    "config_type",
    "from_dict",
    "scale_config",
    "scale_stages",
    "to_dict",
]
