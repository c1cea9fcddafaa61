"""YOLO training targets and loss, as darknet's ``[yolo]`` layer computes them (AlexeyAB's
``yolo_layer.c`` of the CSPNet era; architectures.md 5.4, paper-tables training settings).

Assignment: each ground-truth box goes to the anchor (over every output's anchors) whose shape fits
it best (IoU of the two boxes put on one centre), in the cell of that output that holds the box's
centre; with ``iou_thresh < 1`` every other anchor that fits better than it does too (the
"optimal" cfgs' ``iou_thresh=0.213``). A prediction that overlaps some ground truth by more than
``ignore_thresh`` (0.7) is neither a positive nor a negative for objectness.

Loss per image (summed over cells, averaged over the batch): objectness and class BCE (class targets
smoothed by ``label_smoothing``), and the box term: ``mse`` on the cell offsets (after the sigmoid and
``scale_x_y``) and the log sizes, scaled by ``2 - w h`` (small boxes count more), or ``giou``/``diou``
/``ciou`` on the decoded boxes, scaled by ``iou_normalizer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from ..errors import OptionError
from .anchors import shape_iou
from .yolo_decode import YoloHead, decode_head

BOX_LOSSES = ("mse", "giou", "diou", "ciou")


@dataclass(frozen=True)
class LossConfig:
    box_loss: str = "mse"
    ignore_thresh: float = 0.7
    iou_thresh: float = 1.0  # > 1: the best anchor only (darknet's default)
    iou_normalizer: float = 0.75  # the weight of an IoU box loss (darknet's default; the GIoU cfg uses 0.5)
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.box_loss not in BOX_LOSSES:
            raise OptionError(f"{{box_loss}} is not allowed; choose one of {', '.join(BOX_LOSSES)}",
                              box_loss=self.box_loss)
        for name in ("ignore_thresh", "label_smoothing"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise OptionError(f"{{{name}}} must lie in [0, 1)", **{name: value})
        if not self.iou_thresh > 0:
            raise OptionError("{iou_thresh} must be > 0 (1 or more: the best anchor only)", iou_thresh=self.iou_thresh)


@dataclass
class Positives:
    """The assigned cells of one output: image, anchor, row, column, and what they must predict
    (the box in input pixels, xyxy, and its class)."""

    image: torch.Tensor
    anchor: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def empty(cls, device) -> Positives:
        z = torch.zeros(0, dtype=torch.long, device=device)
        return cls(z, z, z, z, torch.zeros(0, 4, device=device), z)


def assign(targets: Sequence[dict], heads: Sequence[YoloHead], grids: Sequence[tuple[int, int]],
           img_size: tuple[int, int], iou_thresh: float = 1.0) -> list[Positives]:
    """The positive cells of every output for a batch whose ``targets[b]`` hold ``boxes`` (xyxy,
    input pixels) and ``labels``; ``grids[i]`` is output i's (rows, cols)."""
    device = targets[0]["boxes"].device if targets else torch.device("cpu")
    anchors = torch.tensor([a for h in heads for a in h.anchors], dtype=torch.float32, device=device)
    owner = torch.tensor([i for i, h in enumerate(heads) for _ in h.anchors], device=device)
    local = torch.tensor([a for h in heads for a in range(h.num_anchors)], device=device)
    boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32).to(device).reshape(-1, 4) for t in targets]
    counts = torch.tensor([len(b) for b in boxes], device=device)
    if not targets or int(counts.sum()) == 0:
        return [Positives.empty(device) for _ in heads]
    image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)
    boxes = torch.cat(boxes)
    labels = torch.cat([torch.as_tensor(t["labels"], device=device).long().reshape(-1) for t in targets])
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    iou = shape_iou(wh, anchors)
    chosen = F.one_hot(iou.argmax(1), len(anchors)).bool() | (iou > iou_thresh)
    box_idx, anchor_idx = chosen.nonzero(as_tuple=True)
    level = owner[anchor_idx]
    out = []
    for i, (rows, cols) in enumerate(grids):
        k, a = box_idx[level == i], anchor_idx[level == i]
        col = (centre[k, 0] / img_size[1] * cols).long().clamp(0, cols - 1)
        row = (centre[k, 1] / img_size[0] * rows).long().clamp(0, rows - 1)
        out.append(Positives(image[k], local[a], row, col, boxes[k], labels[k]))
    return out


class YoloLoss:
    """``loss(raws, targets, img_size)`` -> (total, components): the training loss of a detector's
    raw output maps, averaged over the batch; ``components`` (box, obj, cls) are detached, for logs."""

    def __init__(self, heads: Sequence[YoloHead], cfg: LossConfig = LossConfig()):
        self.heads, self.cfg = list(heads), cfg

    def __call__(self, raws: Sequence[torch.Tensor], targets: Sequence[dict], img_size) -> tuple[torch.Tensor, dict]:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        grids = [tuple(r.shape[-2:]) for r in raws]
        positives = assign(targets, self.heads, grids, size, self.cfg.iou_thresh)
        batch = raws[0].shape[0]
        gt = [torch.as_tensor(t["boxes"], dtype=torch.float32).to(raws[0].device).reshape(-1, 4) for t in targets]
        box = obj = cls = raws[0].new_zeros(())
        for raw, head, pos in zip(raws, self.heads, positives, strict=True):
            terms = self._output(raw.float(), head, pos, gt, size)
            box, obj, cls = box + terms[0], obj + terms[1], cls + terms[2]
        total = (box + obj + cls) / batch
        parts = {"box": box, "obj": obj, "cls": cls}
        return total, {k: float(v.detach()) / batch for k, v in parts.items()}

    def _output(self, raw, head, pos: Positives, gt: list[torch.Tensor], size):
        cfg = self.cfg
        b, _, rows, cols = raw.shape
        a, c = head.num_anchors, head.num_classes
        p = raw.view(b, a, 5 + c, rows, cols).permute(0, 1, 3, 4, 2)  # B, A, H, W, 5 + C
        with torch.no_grad():  # predictions overlapping a ground truth well are not negatives
            boxes = decode_head(raw.detach(), head, size)[..., :4].view(b, a, rows, cols, 4)
            ignore = torch.zeros(b, a, rows, cols, dtype=torch.bool, device=raw.device)
            for i, g in enumerate(gt):
                if len(g):
                    ignore[i] = box_iou(boxes[i].reshape(-1, 4), g).amax(1).view(a, rows, cols) > cfg.ignore_thresh
        obj_target = torch.zeros(b, a, rows, cols, device=raw.device)
        weight = (~ignore).float()
        if len(pos.image):
            obj_target[pos.image, pos.anchor, pos.row, pos.col] = 1.0
            weight[pos.image, pos.anchor, pos.row, pos.col] = 1.0
        obj = (F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none") * weight).sum()
        if not len(pos.image):
            zero = raw.sum() * 0  # keeps every output in the graph (DDP wants a gradient for each)
            return zero, obj * cfg.obj_normalizer, zero
        cell = p[pos.image, pos.anchor, pos.row, pos.col]  # P, 5 + C
        onehot = F.one_hot(pos.labels, c).float()
        if cfg.label_smoothing:
            onehot = onehot * (1 - cfg.label_smoothing) + cfg.label_smoothing / c
        cls = F.binary_cross_entropy_with_logits(cell[:, 5:], onehot, reduction="sum")
        box = self._box(cell, head, pos, rows, cols, size)
        return box, obj * cfg.obj_normalizer, cls * cfg.cls_normalizer

    def _box(self, cell, head: YoloHead, pos: Positives, rows: int, cols: int, size) -> torch.Tensor:
        h, w = size
        anchors = torch.tensor(head.anchors, dtype=cell.dtype, device=cell.device)[pos.anchor]
        s = head.scale_x_y
        xy = cell[:, :2].sigmoid() * s - (s - 1) / 2  # offset in the cell
        gt = pos.boxes
        gt_wh = (gt[:, 2:] - gt[:, :2]).clamp(min=1e-6)
        grid = torch.stack([pos.col, pos.row], 1).to(cell.dtype)
        scale = torch.tensor([cols / w, rows / h], dtype=cell.dtype, device=cell.device)
        target_xy = (gt[:, :2] + gt[:, 2:]) / 2 * scale - grid
        if self.cfg.box_loss == "mse":
            weight = 2 - gt_wh.prod(1) / (w * h)
            target_wh = torch.log(gt_wh / anchors)
            err = (xy - target_xy).pow(2).sum(1) + (cell[:, 2:4] - target_wh).pow(2).sum(1)
            return (weight * err).sum() / 2
        centre = (grid + xy) / scale
        wh = anchors * cell[:, 2:4].clamp(max=math.log(1e4)).exp()
        pred = torch.cat([centre - wh / 2, centre + wh / 2], 1)
        fn = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
        return fn[self.cfg.box_loss](pred, gt, reduction="sum") * self.cfg.iou_normalizer
