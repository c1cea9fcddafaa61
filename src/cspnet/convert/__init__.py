"""Weights made elsewhere, onto cspnet's native models: timm state dicts (:mod:`.timm`, a key mapping
per architecture) and darknet ``.cfg`` + ``.weights`` files (:mod:`.darknet`, conv by conv, checked
by running both networks). Both end in :func:`save_converted`.

    name, state = cspnet.convert.from_timm(timm_state_dict, "cspresnext50")
    model = cspnet.convert.to_native_model("csresnext50.cfg", "csresnext50.weights")
"""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoint import check_state_dict, model_metadata, save_state_dict
from .darknet import NativeMatch, match_native, to_native, to_native_model
from .timm import TIMM_MODELS, build_for, check_timm_name, from_timm


def save_converted(model: nn.Module, state: dict[str, torch.Tensor], path, source: str) -> None:
    """Write converted weights ``state`` of ``model`` (which may live on the meta device) as a
    cspnet .safetensors checkpoint: name and config in the metadata, so
    ``create_model(checkpoint=path)`` needs no name, and ``converted_from`` saying from what."""
    check_state_dict(model, state, source)
    save_state_dict(state, path, model_metadata(model, {"converted_from": source}))


__all__ = [
    "TIMM_MODELS",
    "NativeMatch",
    "build_for",
    "check_timm_name",
    "from_timm",
    "match_native",
    "save_converted",
    "to_native",
    "to_native_model",
]
