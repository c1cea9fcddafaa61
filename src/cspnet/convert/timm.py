"""timm state dicts onto cspnet's timm-structure models (a key mapping per architecture).

timm is never imported here: a timm state dict is just a mapping of names to tensors.
"""

from __future__ import annotations

import re

import torch

from ..checkpoint import CheckpointError, check_state_dict
from ..models import create_model

# timm model name -> cspnet model with the same architecture
TIMM_MODELS = {
    "resnet50": "timm_resnet50",
    "resnext50_32x4d": "timm_resnext50_32x4d",
    "densenet201": "timm_densenet201",
    "darknet53": "timm_darknet53",
    "cspresnet50": "timm_cspresnet50",
    "cspresnext50": "timm_cspresnext50",
    "cspdarknet53": "timm_cspdarknet53",
}


# (pattern, replacement) pairs; a replacement is a format string over the match's groups, where
# {d1} means group 1 minus one (timm counts layer1.., denseblock1.. from 1).
_RESNET_RULES = [
    (r"conv1\.(.+)", "stem.conv.conv.{1}"),
    (r"bn1\.(.+)", "stem.conv.bn.{1}"),
    (r"layer(\d+)\.(\d+)\.conv(\d)\.(.+)", "stages.{d1}.blocks.{2}.conv{3}.conv.{4}"),
    (r"layer(\d+)\.(\d+)\.bn(\d)\.(.+)", "stages.{d1}.blocks.{2}.conv{3}.bn.{4}"),
    (r"layer(\d+)\.(\d+)\.downsample\.0\.(.+)", "stages.{d1}.blocks.{2}.shortcut.conv.{3}"),
    (r"layer(\d+)\.(\d+)\.downsample\.1\.(.+)", "stages.{d1}.blocks.{2}.shortcut.bn.{3}"),
    (r"fc\.(.+)", "head.fc.{1}"),
]
_CSP_STAGE_RULES = [
    (r"stages\.(\d+)\.conv_down\.(.+)", "stages.{1}.down.{2}"),
    (r"stages\.(\d+)\.conv_exp\.(.+)", "stages.{1}.split.{2}"),
    (r"stages\.(\d+)\.blocks\.(.+)", "stages.{1}.blocks.{2}"),
    (r"stages\.(\d+)\.conv_transition_b\.(.+)", "stages.{1}.partial_transition.{2}"),
    (r"stages\.(\d+)\.conv_transition\.(.+)", "stages.{1}.transition.{2}"),
    (r"head\.fc\.(.+)", "head.fc.{1}"),
]
_CSPRESNET_RULES = [(r"stem\.conv1\.(.+)", "stem.conv.{1}"), *_CSP_STAGE_RULES]
_CSPDARKNET_RULES = [(r"stem\.conv1\.(.+)", "stem.{1}"), *_CSP_STAGE_RULES]
_DENSENET_RULES = [
    (r"features\.conv0\.(.+)", "stem.conv.conv.{1}"),
    (r"features\.norm0\.(.+)", "stem.conv.bn.{1}"),
    (r"features\.denseblock(\d+)\.denselayer(\d+)\.norm(\d)\.(.+)", "stages.{d1}.blocks.layers.{d2}.conv{3}.bn.{4}"),
    (r"features\.denseblock(\d+)\.denselayer(\d+)\.conv(\d)\.(.+)", "stages.{d1}.blocks.layers.{d2}.conv{3}.conv.{4}"),
    (r"features\.transition(\d+)\.norm\.(.+)", "stages.{d1}.transition.bn.{2}"),
    (r"features\.transition(\d+)\.conv\.(.+)", "stages.{d1}.transition.conv.{2}"),
    (r"features\.norm5\.(.+)", "final.bn.{1}"),
    (r"classifier\.(.+)", "head.fc.{1}"),
]
_RULES = {
    "resnet50": _RESNET_RULES,
    "resnext50_32x4d": _RESNET_RULES,
    "densenet201": _DENSENET_RULES,
    "darknet53": _CSPDARKNET_RULES,
    "cspresnet50": _CSPRESNET_RULES,
    "cspresnext50": _CSPRESNET_RULES,
    "cspdarknet53": _CSPDARKNET_RULES,
}


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        m = re.fullmatch(pattern, key)
        if m:
            values = {str(i): g for i, g in enumerate(m.groups(), start=1)}
            values.update({f"d{i}": str(int(g) - 1) for i, g in enumerate(m.groups(), start=1) if g.isdigit()})
            return re.sub(r"\{(\w+)\}", lambda t, v=values: v[t.group(1)], repl)
    return None


def build_for(model_name: str, state: dict[str, torch.Tensor]):
    """The (meta-device) model ``state`` belongs to: its class count and input channels are read
    off the classifier and the first conv of the state dict."""
    with torch.device("meta"):
        probe = create_model(model_name)
        first_conv = next(k for k, v in probe.state_dict().items() if v.ndim == 4)
        fc = state.get("head.fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None else 0
        in_chans = int(state[first_conv].shape[1]) if first_conv in state else 3
        return create_model(model_name, num_classes=num_classes, in_chans=in_chans)


def check_timm_name(timm_name: str) -> str:
    """The cspnet model for a timm name; a one-line ValueError listing the supported ones otherwise
    (checked before any file is read, so a typo is reported as a typo)."""
    if timm_name not in _RULES:
        raise ValueError(f"no cspnet model for timm's {timm_name!r}; supported: {', '.join(TIMM_MODELS)}")
    return TIMM_MODELS[timm_name]


def from_timm(state_dict: dict[str, torch.Tensor], timm_name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Map a timm state dict of ``timm_name`` onto cspnet's model of the same architecture.

    Returns ``(cspnet_model_name, state_dict)``; the state dict loads with ``strict=True``.
    Raises ValueError naming the first key that has no counterpart or the wrong shape.
    """
    check_timm_name(timm_name)
    rules = _RULES[timm_name]
    out = {}
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is None:
            raise ValueError(f"timm {timm_name}: key {key!r} has no counterpart in {TIMM_MODELS[timm_name]}")
        out[new] = value
    name = TIMM_MODELS[timm_name]
    model = build_for(name, out)
    try:
        check_state_dict(model, out, f"timm {timm_name}")
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    return name, out
