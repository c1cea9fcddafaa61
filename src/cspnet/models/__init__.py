"""The model zoo."""

from .classifier import Classifier, FeatureExtractor
from .config import Reference
from .registry import build_from_config, create_model, get_config, get_entry, list_models

__all__ = [
    "Classifier",
    "FeatureExtractor",
    "Reference",
    "build_from_config",
    "create_model",
    "get_config",
    "get_entry",
    "list_models",
]
