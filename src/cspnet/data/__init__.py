"""Data sets and transforms: classification specs (ImageFolder, CIFAR batches, torchvision sets on
disk, the built-in digits) and detection specs (COCO and YOLO layouts), with torchvision.transforms.v2
pipelines."""

from .classify import ClassifyData, ClassifySamples, build_classify_data, collate
from .detect import (
    DETECT_SPEC_HELP,
    DetectionDataset,
    DetectionRecord,
    DetectionSource,
    Letterbox,
    collate_detection,
    letterbox,
    letterbox_boxes,
    load_detection_source,
    unletterbox_boxes,
)
from .images import UnreadableImage, image_paths, open_image, to_channels
from .sources import SPEC_HELP, Source, load_source
from .transforms import build_transform, preprocess_spec

__all__ = [
    "DETECT_SPEC_HELP",
    "SPEC_HELP",
    "ClassifyData",
    "ClassifySamples",
    "DetectionDataset",
    "DetectionRecord",
    "DetectionSource",
    "Letterbox",
    "Source",
    "UnreadableImage",
    "build_classify_data",
    "build_transform",
    "collate",
    "collate_detection",
    "image_paths",
    "letterbox",
    "letterbox_boxes",
    "load_detection_source",
    "load_source",
    "open_image",
    "preprocess_spec",
    "to_channels",
    "unletterbox_boxes",
]
