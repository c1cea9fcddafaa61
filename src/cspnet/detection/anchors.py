"""Anchors that fit the data: k-means of the training boxes' shapes with darknet's distance
``1 - IoU`` (YOLOv2 Sec. 2; darknet's ``calc_anchors``), and how well a set of anchors fits.

Shapes are compared as darknet assigns them, boxes and anchors on one centre. A box is *recallable*
when some anchor has shape IoU >= ``RECALL_IOU`` with it: the head scales an anchor by ``exp(t)``,
so a shape within about 2x on each side is reachable (ultralytics' ratio limit of 4 is the same
tolerance). Training warns when fewer than ``GOOD_RECALL`` of the boxes are recallable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

RECALL_IOU = 0.25
GOOD_RECALL = 0.98  # ultralytics' autoanchor threshold
KMEANS_ITERS = 300


def box_shapes(records: Sequence, img_size: int) -> np.ndarray:
    """(N, 2) widths and heights of every training box, in pixels of the ``img_size`` letterbox."""
    shapes = [(r.boxes[:, 2:] - r.boxes[:, :2]) * (img_size / max(r.width, r.height))
              for r in records if len(r.boxes)]
    wh = np.concatenate(shapes) if shapes else np.zeros((0, 2))
    return wh[(wh > 0).all(1)]


def shape_iou(wh, anchors):
    """(N, A) IoU of box shapes ``wh`` (N, 2) and anchors (A, 2) placed on one centre: the loss's
    assignment (tensors in, a tensor out) and the k-means here (arrays in, an array out)."""
    if isinstance(wh, np.ndarray):
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        return shape_iou(as_t(wh), as_t(anchors)).numpy()
    inter = torch.min(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)


@dataclass(frozen=True)
class AnchorFit:
    """``mean_iou``: the average best-anchor IoU (darknet's ``avg IoU``); ``recall``: the fraction
    of boxes some anchor can reach (IoU >= ``RECALL_IOU``)."""

    mean_iou: float
    recall: float
    boxes: int

    @property
    def good(self) -> bool:
        return self.recall >= GOOD_RECALL


def anchor_fit(wh: np.ndarray, anchors) -> AnchorFit:
    if not len(wh):
        return AnchorFit(float("nan"), float("nan"), 0)
    best = shape_iou(wh, anchors).max(1)
    return AnchorFit(float(best.mean()), float((best >= RECALL_IOU).mean()), len(wh))


def kmeans_anchors(wh: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` anchors (sorted by area, rounded to pixels) minimising ``1 - IoU`` to the boxes.

    Initialised k-means++-style on the IoU distance; each centre moves to the median shape of its
    boxes (robust to a few huge or tiny boxes). Raises ValueError with fewer boxes than anchors."""
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one anchor")
    if len(wh) < n:
        raise ValueError(f"{len(wh)} boxes cannot make {n} anchors; lower n or use more data")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):
        d = 1 - shape_iou(wh, np.asarray(centres)).max(1)
        centres.append(wh[rng.choice(len(wh), p=d / d.sum())] if d.sum() > 0 else wh[rng.integers(len(wh))])
    centres = np.asarray(centres, dtype=np.float64)
    owner = None
    for _ in range(KMEANS_ITERS):
        new = shape_iou(wh, centres).argmax(1)
        if owner is not None and (new == owner).all():
            break
        owner = new
        for k in range(n):
            if (owner == k).any():
                centres[k] = np.median(wh[owner == k], axis=0)
    centres = np.maximum(np.round(centres), 1)
    return centres[np.argsort(centres.prod(1), kind="stable")]


def format_anchors(anchors) -> str:
    """As ``--set anchors=...`` takes them (JSON)."""
    return "[" + ",".join(f"[{int(w)},{int(h)}]" for w, h in np.asarray(anchors).tolist()) + "]"
