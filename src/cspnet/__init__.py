"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch."""

from .csp import PRESETS, ConcatStack, CrossStagePartial, cspify
from .models import create_model, list_models
from .tools.optimize import optimize_for_inference

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConcatStack",
    "CrossStagePartial",
    "create_model",
    "cspify",
    "list_models",
    "optimize_for_inference",
]
