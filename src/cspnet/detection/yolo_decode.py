"""Decoding YOLO heads into boxes, as darknet's ``[yolo]`` layer does (``new_coords=0``), and NMS.

A head's raw output is (B, A * (5 + C), H, W): for anchor a, channels a*(5+C) ... hold
tx, ty, tw, th, objectness and C class scores. With ``new_coords=0`` (every CSPNet-era cfg):

    x = (col + s * sigmoid(tx) - (s - 1) / 2) / W * net_w      (s = scale_x_y, likewise y)
    w = anchor_w * exp(tw)                                      (anchors in input pixels)
    objectness and class probabilities: independent sigmoids; score = objectness * class prob

``new_coords=1`` (Scaled-YOLOv4) expects the conv to have applied the sigmoid already and uses
w = 4 * tw^2 * anchor_w. Boxes are xyxy in pixels of the network input; nothing is clipped.
Used for darknet cfgs (:mod:`cspnet.darknet`) and for the native detectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class YoloHead:
    """What decoding one head needs: its anchors (w, h in input pixels, one per output anchor, i.e.
    darknet's ``anchors`` already picked by ``mask``), class count and ``scale_x_y``."""

    anchors: tuple[tuple[float, float], ...]
    num_classes: int
    scale_x_y: float = 1.0
    new_coords: bool = False

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)


def _size(img_size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def _check(raw: torch.Tensor, head: YoloHead) -> tuple[int, int, int, int]:
    b, ch, gh, gw = raw.shape
    if ch != head.num_anchors * (5 + head.num_classes):
        raise ValueError(f"a head with {head.num_anchors} anchors and {head.num_classes} classes has "
                         f"{head.num_anchors * (5 + head.num_classes)} channels, not {ch}")
    return b, head.num_anchors, gh, gw


def activate(raw: torch.Tensor, head: YoloHead) -> torch.Tensor:
    """What darknet's ``[yolo]`` layer outputs (same layout as ``raw``): sigmoid on tx, ty,
    objectness and classes (``new_coords=0``; with 1 the conv did it), then x, y scaled by
    ``scale_x_y`` about the cell centre; tw, th are left as they are."""
    b, a, gh, gw = _check(raw, head)
    p = raw.view(b, a, -1, gh, gw)
    xy, wh, rest = p[:, :, :2], p[:, :, 2:4], p[:, :, 4:]
    if not head.new_coords:
        xy, rest = xy.sigmoid(), rest.sigmoid()
    s = head.scale_x_y
    if s != 1:
        xy = xy * s - (s - 1) / 2
    return torch.cat([xy, wh, rest], 2).view_as(raw)


def decode_head(raw: torch.Tensor, head: YoloHead, img_size) -> torch.Tensor:
    """One head -> (B, A*H*W, 5 + C): x1, y1, x2, y2 (input pixels), objectness, class probabilities.

    Rows are ordered anchor-major (anchor, row, col), darknet's own order.
    """
    b, a, gh, gw = _check(raw, head)
    net_h, net_w = _size(img_size)
    p = activate(raw.float(), head).view(b, a, -1, gh, gw).permute(0, 1, 3, 4, 2)
    wh = 4 * p[..., 2:4] ** 2 if head.new_coords else p[..., 2:4].exp()
    rows = torch.arange(gh, device=raw.device, dtype=p.dtype).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=raw.device, dtype=p.dtype).view(1, 1, 1, gw)
    cx = (cols + p[..., 0]) / gw * net_w
    cy = (rows + p[..., 1]) / gh * net_h
    anchors = torch.tensor(head.anchors, device=raw.device, dtype=p.dtype).view(1, a, 1, 1, 2)
    wh = wh * anchors
    half_w, half_h = wh[..., 0] / 2, wh[..., 1] / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)
    return torch.cat([boxes, p[..., 4:]], -1).reshape(b, a * gh * gw, -1)


def decode(raws, heads, img_size) -> torch.Tensor:
    """All heads of a network -> (B, N, 5 + C), heads concatenated in order."""
    raws, heads = list(raws), list(heads)
    if len(raws) != len(heads):
        raise ValueError(f"{len(raws)} head outputs but {len(heads)} head descriptions")
    if len({h.num_classes for h in heads}) > 1:
        raise ValueError("heads disagree on the number of classes")
    return torch.cat([decode_head(r, h, img_size) for r, h in zip(raws, heads, strict=True)], 1)


def nms(
    decoded: torch.Tensor,
    conf_thresh: float = 0.25,
    iou_thresh: float = 0.45,
    max_det: int = 300,
) -> list[dict[str, torch.Tensor]]:
    """Per image: boxes whose objectness and objectness x class probability exceed ``conf_thresh``
    (one candidate per box and class, as darknet keeps every class above the threshold), then
    class-wise NMS (``torchvision.ops.batched_nms``). Returns dicts of ``boxes`` (K, 4) xyxy,
    ``scores`` (K,) and ``labels`` (K,), best first."""
    results = []
    for pred in decoded:
        obj = pred[:, 4]
        keep = obj > conf_thresh
        pred = pred[keep]
        scores = pred[:, 4:5] * pred[:, 5:]
        box_idx, labels = (scores > conf_thresh).nonzero(as_tuple=True)
        boxes, scores = pred[box_idx, :4], scores[box_idx, labels]
        kept = batched_nms(boxes, scores, labels, iou_thresh)[:max_det]
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results


def detect(raws, heads, img_size, conf_thresh=0.25, iou_thresh=0.45, max_det=300):
    """Raw head outputs -> per-image detections (:func:`decode`, then :func:`nms`)."""
    return nms(decode(raws, heads, img_size), conf_thresh, iou_thresh, max_det)


__all__ = ["YoloHead", "activate", "decode", "decode_head", "detect", "nms"]
