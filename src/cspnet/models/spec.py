"""A model named by a string (a registered name or a checkpoint file), and the input it takes: its
channels, its total stride, and the sizes it runs at. Shared by the commands and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import SUFFIXES
from ..errors import OptionError


def looks_like_file(spec: str) -> bool:
    return Path(spec).suffix in SUFFIXES or "/" in spec or Path(spec).is_file()


def load_model(spec: str, checkpoint: str | None = None, num_classes: int | None = None) -> nn.Module:
    """A model (in eval mode) from a registered name (optionally with ``checkpoint`` weights) or
    from a cspnet checkpoint file that names its model. Every failure is a one-line ValueError."""
    from .registry import create_model

    if looks_like_file(spec):
        if checkpoint is not None:
            raise ValueError(f"{spec} is a checkpoint file; give a model name with the checkpoint, or the file alone")
        return create_model(num_classes=num_classes, checkpoint=spec).eval()
    return create_model(spec, num_classes=num_classes, checkpoint=checkpoint).eval()


def input_channels(model: nn.Module) -> int | None:
    """The channels a model reads: recorded as ``in_chans`` when cspnet builds it, else (a foreign
    module, timm's say) those of its first convolution; None when it has none."""
    chans = getattr(model, "in_chans", None)
    if chans is not None:
        return int(chans)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def model_stride(model: nn.Module) -> int:
    """The largest down-sampling factor of the model (its last feature level's reduction)."""
    info = getattr(model, "feature_info", None)
    if info:
        return max(int(f["reduction"]) for f in info)
    return 1


def default_img_size(model: nn.Module) -> int:
    """The model's reference resolution, else 256 (as ``cspnet info``)."""
    ref = getattr(getattr(model, "cfg", None), "reference", None)
    return int(ref.img_size) if ref is not None else 256


# The input-size rule every command shares (``--img-size``). A model of total stride 32 still runs
# at 16 px (its last maps are 1 px, then pooled), and the built-in 8 px digits train well at 16;
# below 16 the last stages see nothing but padding, and such runs train to chance.
MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 4096
IMG_SIZE_WHY = (f"input sizes are {MIN_IMG_SIZE} to {MAX_IMG_SIZE} px for every command; detectors also "
                "need a multiple of their stride")


def check_img_size(model: nn.Module, img_size: int, divisible: bool | None = None) -> int:
    """``img_size`` if it is within the shared rule (:data:`MIN_IMG_SIZE` to :data:`MAX_IMG_SIZE`)
    and, with ``divisible`` (by default for detectors: their scales must line up), a multiple of
    the model's total stride; else a one-line error naming the sizes that work."""
    if not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
        raise OptionError(f"{{img_size}} is outside {MIN_IMG_SIZE}..{MAX_IMG_SIZE} ({IMG_SIZE_WHY})",
                          img_size=img_size)
    stride = model_stride(model)
    if divisible is None:
        divisible = hasattr(model, "heads")  # a detector (models/ sits below detection/: no isinstance)
    if divisible and img_size % stride:
        lo = img_size // stride * stride
        raise OptionError(f"{{img_size}} is not divisible by the model's stride {stride}; use "
                          f"{lo or stride}" + (f" or {lo + stride}" if lo else ""), img_size=img_size)
    return img_size
