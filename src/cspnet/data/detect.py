"""Detection samples for training and evaluation: ``(image, target)`` pairs in torchvision's
tv_tensors, so v2 augmentations move the boxes with the pixels; the letterbox evaluation resizes
with, and its inverse for predictions; a collate that names unreadable images instead of failing.

Reading the files on disk (COCO or YOLO layout) is :mod:`cspnet.data.detect_sources`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import clip_boxes_to_image
from torchvision.transforms.v2 import functional as F

from .classify import MAX_CONSECUTIVE_UNREADABLE
from .detect_sources import DETECT_SPEC_HELP, DetectionRecord, DetectionSource, load_detection_source
from .images import UnreadableImage, open_image, to_channels

LETTERBOX_FILL = 114  # the grey ultralytics and darknet pad with

__all__ = [
    "DETECT_SPEC_HELP",
    "DetectionDataset",
    "DetectionRecord",
    "DetectionSource",
    "Letterbox",
    "collate_detection",
    "letterbox",
    "letterbox_boxes",
    "load_detection_source",
    "unletterbox_boxes",
]


class DetectionDataset(Dataset):
    """``(image, target)`` for each record: a uint8 RGB :class:`~torchvision.tv_tensors.Image` and
    ``{"boxes": BoundingBoxes (XYXY, float32, pixels), "labels": int64, "image_id", "orig_size": (H, W)}``
    (crowd regions left out: they are not targets), passed through ``transforms(image, target)``.

    An image that cannot be decoded gives ``(None, {"image_id", "skipped": [message]})``
    (``substitute=False``, evaluation: nothing counted twice), or the next readable sample with the
    messages in ``target["skipped"]`` (``substitute=True``, training: batches keep their size);
    :func:`collate_detection` lists them.
    """

    def __init__(self, records: list[DetectionRecord], transforms: Callable | None = None, substitute: bool = False):
        self.records, self.transforms, self.substitute = records, transforms, substitute

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[tv_tensors.Image, dict]:
        """The untransformed sample; raises :class:`UnreadableImage`."""
        r = self.records[i]
        img = open_image(r.path)
        if r.exif_transpose:
            img = ImageOps.exif_transpose(img)
        if img.size != (r.width, r.height):
            raise UnreadableImage(f"{r.path}: the image is {img.size[0]}x{img.size[1]} but its annotations are for "
                                  f"{r.width}x{r.height}; skipped")
        image = tv_tensors.Image(F.pil_to_tensor(to_channels(img, 3)))
        keep = ~r.iscrowd
        boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(r.height, r.width)),
            "labels": torch.as_tensor(r.labels[keep], dtype=torch.int64),
            "image_id": r.image_id,
            "orig_size": (r.height, r.width),
        }
        return image, target

    def __getitem__(self, i: int):
        skipped = []
        tries = min(MAX_CONSECUTIVE_UNREADABLE, len(self.records)) if self.substitute else 1
        for k in range(tries):
            try:
                image, target = self.load((i + k) % len(self.records))
            except UnreadableImage as e:
                skipped.append(str(e))
                continue
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            if skipped:
                target["skipped"] = skipped
            return image, target
        if not self.substitute:
            return None, {"image_id": self.records[i].image_id, "skipped": skipped}
        raise ValueError(f"{skipped[-1]} (and the {len(skipped) - 1} images before it are unreadable too)")


def collate_detection(samples) -> dict:
    """``{"inputs": B x C x H x W, "targets": [dict], "skipped": [message]}``: readable samples stacked
    (one size per batch: letterbox or resize first), unreadable ones named."""
    kept = [(img, t) for img, t in samples if img is not None]
    skipped = [s for _, t in samples for s in t.get("skipped", ())]
    targets = [{k: v for k, v in t.items() if k != "skipped"} for _, t in kept]
    if not kept:
        return {"inputs": torch.empty(0, dtype=torch.uint8), "targets": [], "skipped": skipped}
    shapes = {tuple(img.shape) for img, _ in kept}
    if len(shapes) > 1:
        sizes = ", ".join(f"image {t['image_id']}: {'x'.join(map(str, img.shape))}" for img, t in kept[:4])
        raise ValueError(f"a detection batch needs images of one size ({sizes}); letterbox or resize them first")
    inputs = torch.stack([img.as_subclass(torch.Tensor) for img, _ in kept])
    return {"inputs": inputs, "targets": targets, "skipped": skipped}


def letterbox(image: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[float, int, int]]:
    """Resize ``image`` (``... x H x W``) so its longer side is ``size``, keeping the aspect ratio, and
    pad it to ``size x size`` centred with grey 114 (114/255 for float images), as ultralytics and
    darknet evaluate; returns it and ``(scale, pad_x, pad_y)``: letterboxed = original * scale + pad."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = image if (new_h, new_w) == (h, w) else F.resize(image, [new_h, new_w], antialias=True)
    if (new_h, new_w) != (size, size):
        fill = LETTERBOX_FILL if image.dtype == torch.uint8 else LETTERBOX_FILL / 255
        out = F.pad(out, [pad_x, pad_y, size - new_w - pad_x, size - new_h - pad_y], fill=fill)
    return out, (scale, pad_x, pad_y)


def letterbox_boxes(boxes: torch.Tensor, params: tuple[float, int, int]) -> torch.Tensor:
    """XYXY boxes of the original image in the letterboxed one."""
    scale, pad_x, pad_y = params
    return boxes.as_subclass(torch.Tensor) * scale + boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])


def unletterbox_boxes(boxes: torch.Tensor, params: tuple[float, int, int],
                      orig_size: tuple[int, int] | None = None) -> torch.Tensor:
    """XYXY boxes predicted on the letterboxed image, in the original's pixels (clipped to
    ``orig_size`` (H, W) when given)."""
    scale, pad_x, pad_y = params
    out = (boxes.as_subclass(torch.Tensor) - boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])) / scale
    return out if orig_size is None else clip_boxes_to_image(out, tuple(orig_size))


class Letterbox(torch.nn.Module):
    """:func:`letterbox` as an ``(image, target)`` transform: the boxes move with the pixels and
    ``target["letterbox"]`` keeps ``(scale, pad_x, pad_y)`` to map predictions back."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        out, params = letterbox(image, self.size)
        target = dict(target, letterbox=params)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = tv_tensors.wrap(letterbox_boxes(boxes, params), like=boxes,
                                              canvas_size=(self.size, self.size))
        return out, target
