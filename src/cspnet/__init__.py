"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

The model API is here (``create_model``, ``list_models``, ``CrossStagePartial``, ``cspify``,
``optimize_for_inference``); every subpackage is reachable as an attribute after a bare
``import cspnet`` (``cspnet.convert``, ``cspnet.darknet``, ``cspnet.detection``, ...), imported on
first use.
"""

import importlib

from . import detection  # noqa: F401  (registers the detectors with the zoo)
from .csp import PRESETS, ConcatStack, CrossStagePartial, cspify
from .inference import optimize_for_inference
from .models import create_model, list_models

__version__ = "0.1.0"

# subpackages and modules imported on first attribute access (README: "Where things are")
SUBMODULES = (
    "analysis", "bench", "checkpoint", "cli", "commands", "convert", "csp", "darknet", "data", "detection", "engine",
    "errors", "inference", "layers", "models", "plots", "weights",
)


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = [
    "PRESETS",
    "ConcatStack",
    "CrossStagePartial",
    "create_model",
    "cspify",
    "list_models",
    "optimize_for_inference",
]
