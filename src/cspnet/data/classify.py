"""Classification data ready for the engine: transformed splits whose batches are dicts
``{"inputs", "targets", "skipped"}``; unreadable files are skipped and named, never fatal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from .images import UnreadableImage
from .sources import Source, load_source
from .transforms import build_transform, preprocess_spec

DEFAULT_SMALL_SIZE, DEFAULT_PHOTO_SIZE = 32, 224
MAX_CONSECUTIVE_UNREADABLE = 64


class ClassifySamples(Dataset):
    """``(tensor, label, skipped paths)``; an unreadable image is replaced by the next readable one
    (``substitute=True``, training: batches keep their size, which DDP and BatchNorm rely on) or
    dropped (``substitute=False``, evaluation: nothing is counted twice)."""

    def __init__(self, source: Dataset, transform, substitute: bool):
        self.source, self.transform, self.substitute = source, transform, substitute

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        skipped = []
        for k in range(min(MAX_CONSECUTIVE_UNREADABLE, len(self.source))):
            try:
                img, label = self.source[(i + k) % len(self.source)]
            except UnreadableImage as e:
                skipped.append(str(e))
                if not self.substitute:
                    return None, -1, skipped
                continue
            return self.transform(img), label, skipped
        raise ValueError(f"{skipped[-1]} (and the {len(skipped) - 1} images before it are unreadable too)")


def collate(samples) -> dict:
    """Stack the readable samples; list the skipped ones."""
    kept = [(x, y) for x, y, _ in samples if x is not None]
    skipped = [s for _, _, names in samples for s in names]
    if kept:
        inputs = torch.stack([x.as_subclass(torch.Tensor) for x, _ in kept])
        targets = torch.tensor([y for _, y in kept], dtype=torch.int64)
    else:
        inputs, targets = torch.empty(0), torch.empty(0, dtype=torch.int64)
    return {"inputs": inputs, "targets": targets, "skipped": skipped}


@dataclass
class ClassifyData:
    """Transformed train/val splits, the class names and the preprocessing (for checkpoints)."""

    spec: str
    train: ClassifySamples
    val: ClassifySamples
    classes: list[str]
    preprocess: dict
    unreadable: dict[str, list[str]] = field(default_factory=dict)  # per split: files left out (data.scan)

    @property
    def in_chans(self) -> int:
        return self.preprocess["in_chans"]


def default_img_size(source: Source) -> int:
    return DEFAULT_SMALL_SIZE if source.small else DEFAULT_PHOTO_SIZE


def build_classify_data(
    spec: str = "builtin",
    img_size: int | None = None,
    in_chans: int | None = None,
    hflip: float | None = None,
    preprocess: dict | None = None,
    crop: bool | Callable[[int], bool] = True,
    train_split: bool = True,
) -> ClassifyData:
    """Load ``spec`` and attach transforms.

    Channels: grey data sets (digits, MNIST, or an ImageFolder whose sampled files are all grey)
    give 1-channel models; anything with colour gives 3-channel models, and every image is
    converted to the model's channels (grey repeated, palette expanded, alpha dropped).
    ``preprocess`` (from a checkpoint) fixes size, channels and normalisation instead.
    ``train_split=False`` (evaluation): the data may have no training split. ``crop`` may be a
    function of the training split's size (the driver's "auto": off for short runs).
    """
    source = load_source(spec, train=train_split)
    if preprocess is None:
        chans = in_chans or (1 if source.grey else 3)
        preprocess = preprocess_spec(img_size or default_img_size(source), chans, source.small)
    flip = source.hflip if hflip is None else hflip
    if callable(crop):
        crop = crop(len(source.train))
    train = ClassifySamples(source.train, build_transform(preprocess, True, flip, crop), substitute=True)
    val = ClassifySamples(source.val, build_transform(preprocess, False), substitute=False)
    if (train_split and len(source.train) == 0) or len(source.val) == 0:
        empty = "train" if train_split and len(source.train) == 0 else "val"
        raise ValueError(f"{spec}: the {empty} split holds no images")
    return ClassifyData(spec, train, val, list(source.classes), preprocess, source.unreadable)
