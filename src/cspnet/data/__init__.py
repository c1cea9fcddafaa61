"""Data sets and transforms: classification specs (ImageFolder, CIFAR batches, torchvision sets on
disk, the built-in digits) with torchvision.transforms.v2 pipelines."""

from .classify import ClassifyData, ClassifySamples, build_classify_data, collate
from .images import UnreadableImage, image_paths, open_image, to_channels
from .sources import SPEC_HELP, Source, load_source
from .transforms import build_transform, preprocess_spec

__all__ = [
    "SPEC_HELP",
    "ClassifyData",
    "ClassifySamples",
    "Source",
    "UnreadableImage",
    "build_classify_data",
    "build_transform",
    "collate",
    "image_paths",
    "load_source",
    "open_image",
    "preprocess_spec",
    "to_channels",
]
