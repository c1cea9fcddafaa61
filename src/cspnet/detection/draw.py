"""Boxes drawn on images: ``predict``'s outputs, and the grid of validation images a training run
leaves (true boxes green, predictions red with their scores), where a user looks first."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes, make_grid

from ..data.detect import letterbox

TRUE, PREDICTED = "lime", "red"
GRID_IMAGES, GRID_SIDE = 16, 256


def draw_boxes(pixels: torch.Tensor, boxes: torch.Tensor, labels: Sequence[str], color: str) -> torch.Tensor:
    """``pixels`` (uint8 CHW) with ``boxes`` (xyxy) drawn and labelled; unchanged when there are none."""
    if not len(labels):
        return pixels
    width = max(1, round(max(pixels.shape[-2:]) / 200))
    return draw_bounding_boxes(pixels, boxes.as_subclass(torch.Tensor).reshape(-1, 4), list(labels), colors=color,
                               width=width)


def validation_grid(path: str | os.PathLike, samples, results: Sequence[dict], names: Sequence[str],
                    category_ids: Sequence[int], conf: float = 0.25) -> None:
    """A grid of the first ``GRID_IMAGES`` readable ``samples`` (``(uint8 image, target)`` in the
    image's own pixels) with their true boxes and the COCO-format ``results`` scoring over ``conf``."""
    from ..plots import save_image

    label_of = {c: k for k, c in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= conf:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    tiles = []
    for image, target in samples:
        if image is None:
            continue
        pixels = image.as_subclass(torch.Tensor)
        pixels = draw_boxes(pixels, target["boxes"], [names[int(c)] for c in target["labels"]], TRUE)
        found = by_image.get(int(target["image_id"]), [])
        if found:
            boxes = box_convert(torch.tensor([r["bbox"] for r in found], dtype=torch.float32), "xywh", "xyxy")
            labels = [f"{names[label_of[r['category_id']]]} {r['score']:.2f}" for r in found]
            pixels = draw_boxes(pixels, boxes, labels, PREDICTED)
        tiles.append(letterbox(pixels, GRID_SIDE)[0])
        if len(tiles) == GRID_IMAGES:
            break
    if tiles:
        save_image(make_grid(tiles, nrow=4, padding=4, pad_value=255), path)
