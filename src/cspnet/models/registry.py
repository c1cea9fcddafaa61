"""The model zoo: one registry of named configs, ``create_model`` and ``list_models`` (timm's API)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checkpoint import load_state_into, read_checkpoint
from .classifier import Classifier, FeatureExtractor
from .config import apply_overrides, from_dict


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    cfg: Any
    builder: Callable[..., Classifier]
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_BUILDERS: dict[type, tuple[str, Callable[..., Classifier]]] = {}


def _add_family(registry: dict, builders: dict, family: str, cfg_type: type, builder, cfgs: dict, docs=None):
    builders[cfg_type] = (family, builder)
    for name, cfg in cfgs.items():
        if name in registry:
            raise ValueError(f"model {name!r} registered twice")
        registry[name] = ModelEntry(name, family, cfg, builder, (docs or {}).get(name, ""))


def register_family(family: str, cfg_type: type, builder: Callable[..., Classifier], cfgs: dict, docs=None):
    """Register every named config of a family; ``builder(cfg, num_classes, in_chans)``."""
    _ensure_loaded()
    _add_family(_REGISTRY, _BUILDERS, family, cfg_type, builder, cfgs, docs)


_PROVIDERS: list[Callable[[], list[tuple]]] = []


def register_provider(families: Callable[[], list[tuple]]) -> None:
    """Families defined above the model layer (the detectors, built on this zoo's backbones):
    ``families()`` gives ``(family, cfg_type, builder, cfgs, docs)`` tuples, registered with the
    built-in families on first use (at once if that has happened), so nothing here imports them."""
    _PROVIDERS.append(families)
    if _LOADED:
        for family in families():
            register_family(*family)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"csp*"``), sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cspnet list` shows them all"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def get_config(name: str, **overrides):
    """The config a name (plus overrides) builds, without building it."""
    return apply_overrides(get_entry(name).cfg, overrides)


def build_from_config(cfg, num_classes: int | None = None, in_chans: int = 3, name: str | None = None) -> nn.Module:
    """The model ``cfg`` describes, initialised; ``num_classes`` None: the family's default (1000
    for classifiers, 80 for detectors). A model with ``init_priors()`` sets its output priors last."""
    _ensure_loaded()
    if type(cfg) not in _BUILDERS:
        raise ValueError(f"no model family builds a {type(cfg).__name__}")
    _, builder = _BUILDERS[type(cfg)]
    model = builder(cfg, in_chans=in_chans, **({} if num_classes is None else {"num_classes": num_classes}))
    model.model_name, model.cfg, model.in_chans = name, cfg, in_chans
    _init_weights(model)
    if hasattr(model, "init_priors"):
        model.init_priors()
    return model


def _check_int(value, arg, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg}={value!r} must be an integer >= {minimum}")


def create_model(
    name: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    checkpoint: str | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model (timm's ``create_model``).

    ``num_classes`` defaults to the family's (1000 for classifiers, 80 for detectors; or the
    checkpoint's), ``in_chans`` to 3 (or the
    checkpoint's). ``overrides`` replace config fields; stage fields such as ``gamma=``,
    ``fusion=`` or ``act=`` apply to every (CSP) stage; on grouped (ResNeXt) stages ``gamma`` is
    rounded to whole groups. ``checkpoint`` loads a .safetensors (or
    .pt/.pth) file; one written by cspnet carries its model name and config, so ``name`` may be
    omitted. A ``num_classes`` different from the checkpoint's replaces the classifier after loading.
    """
    _ensure_loaded()  # checkpoint configs name their family's config types
    if num_classes is not None:
        _check_int(num_classes, "num_classes", 0)
    if in_chans is not None:
        _check_int(in_chans, "in_chans", 1)
    ckpt = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)  # tensors and metadata from one read: one version of the file
    meta = ckpt.meta if ckpt is not None else {}
    if name is None:
        if checkpoint is None:
            raise ValueError("create_model needs a model name or a checkpoint")
        if not meta:
            raise ValueError(f"{checkpoint}: the file carries no cspnet metadata; pass the model name too")
        name = meta.get("model")
    elif meta.get("model") not in (None, name):
        raise ValueError(f"{checkpoint}: holds weights of model {meta['model']!r}, not {name!r}")
    if "config" in meta:
        cfg = from_dict(meta["config"])  # the checkpoint's own config (e.g. saved with fusion="none")
    else:
        cfg = get_entry(name).cfg
    cfg = apply_overrides(cfg, overrides)
    build_classes = meta.get("num_classes") if meta else num_classes
    build_chans = meta.get("in_chans", 3) if in_chans is None else in_chans
    model = build_from_config(cfg, build_classes, build_chans, name)
    if ckpt is not None:
        load_state_into(model, ckpt.state, ckpt.path)
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
    if features_only:
        if not isinstance(model, Classifier):
            raise ValueError(f"features_only=True gives a classifier's feature levels; {name} is a "
                             f"{get_entry(name).family} (its backbone is model.backbone)")
        return FeatureExtractor(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    return model


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


_LOADED = False


def _ensure_loaded() -> None:
    """Import the family modules (:mod:`.families`) and register them, on first use.

    The registry is filled only once every family has imported and registered: a family whose
    import fails leaves it empty, and the next call tries again and raises that same error, never a
    misleading "unknown model"."""
    global _LOADED
    if _LOADED:
        return
    from .families import FAMILIES

    registry, builders = {}, {}
    for family in (*FAMILIES, *(f for provider in _PROVIDERS for f in provider())):
        _add_family(registry, builders, *family)
    _REGISTRY.update(registry)
    _BUILDERS.update(builders)
    _LOADED = True
