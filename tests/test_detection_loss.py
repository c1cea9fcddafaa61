"""YOLO targets and loss: the anchor and cell a box goes to, the ignore rule, each box loss, and that
the loss falls when the predictions move to the targets."""

from __future__ import annotations

import math

import pytest
import torch

from cspnet.detection.loss import LossConfig, YoloLoss, assign
from cspnet.detection.yolo_decode import YoloHead

# yolov3-tiny's two outputs: stride 32 (13x13 at 416) with the big anchors, stride 16 with the small
HEADS = [YoloHead(((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)), 2),
         YoloHead(((23.0, 27.0), (37.0, 58.0), (81.0, 82.0)), 2)]
GRIDS = [(13, 13), (26, 26)]
SIZE = (416, 416)


def _target(*boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.tensor(labels or [0] * len(boxes))}


def test_a_box_goes_to_its_best_anchor_and_the_cell_of_its_centre():
    # a 40 x 60 box centred at (100, 200): best shape (37, 58) = anchor 1 of the stride-16 output
    (pos32, pos16) = assign([_target([80, 170, 120, 230])], HEADS, GRIDS, SIZE)
    assert len(pos32.image) == 0
    assert pos16.anchor.tolist() == [1] and pos16.col.tolist() == [100 // 16] and pos16.row.tolist() == [200 // 16]
    # a 300 x 300 box: anchor (344, 319) of the stride-32 output
    (pos32, pos16) = assign([_target([50, 50, 350, 350], labels=[1])], HEADS, GRIDS, SIZE)
    assert pos32.anchor.tolist() == [2] and pos32.labels.tolist() == [1] and len(pos16.image) == 0
    assert (pos32.row.item(), pos32.col.item()) == (200 // 32, 200 // 32)


def test_iou_thresh_assigns_every_anchor_that_fits_well_enough():
    box = _target([80, 170, 120, 230])
    best_only = sum(len(p.image) for p in assign([box], HEADS, GRIDS, SIZE, iou_thresh=1.0))
    several = assign([box], HEADS, GRIDS, SIZE, iou_thresh=0.213)
    assert best_only == 1 and sum(len(p.image) for p in several) >= 2
    assert 1 in several[1].anchor.tolist()  # the best one stays


def test_boxes_on_the_edge_stay_in_the_grid_and_images_without_boxes_are_fine():
    pos = assign([_target([400, 400, 416, 416]), _target()], HEADS, GRIDS, SIZE)
    cells = [(p.row.tolist(), p.col.tolist()) for p in pos if len(p.image)]
    assert cells and all(max(r) < 26 and max(c) < 26 for r, c in cells)
    assert all(set(p.image.tolist()) <= {0} for p in pos)


def _raws(batch=1, fill=-6.0):
    return [torch.full((batch, 3 * 7, h, w), fill, requires_grad=True) for h, w in GRIDS]


@pytest.mark.parametrize("box_loss", ["mse", "giou", "diou", "ciou"])
def test_the_loss_falls_as_the_predictions_move_to_the_targets(box_loss):
    torch.manual_seed(0)
    loss = YoloLoss(HEADS, LossConfig(box_loss=box_loss))
    targets = [_target([80, 170, 120, 230], [10, 10, 330, 300], labels=[0, 1])]
    raws = [torch.randn(1, 21, h, w, requires_grad=True) for h, w in GRIDS]
    opt = torch.optim.Adam(raws, lr=0.1)
    first = None
    for _ in range(40):
        total, parts = loss(raws, targets, 416)
        first = first if first is not None else (float(total), parts)
        opt.zero_grad()
        total.backward()
        opt.step()
    last, last_parts = loss(raws, targets, 416)
    assert float(last) < 0.5 * first[0]
    for key in ("box", "obj", "cls"):
        assert last_parts[key] < first[1][key], key


def test_mse_is_zero_for_exact_box_predictions():
    """Raw values that decode exactly to the ground truth give no box loss under mse."""
    loss = YoloLoss(HEADS, LossConfig(box_loss="mse"))
    raws = _raws()
    target = _target([80, 170, 120, 230])
    (_, pos16) = assign([target], HEADS, GRIDS, SIZE)
    a, r, c = pos16.anchor.item(), pos16.row.item(), pos16.col.item()
    with torch.no_grad():
        cell = raws[1].view(1, 3, 7, 26, 26)[0, a, :, r, c]
        off = torch.tensor([100 / 16 - c, 200 / 16 - r])
        cell[:2] = torch.log(off / (1 - off))
        cell[2:4] = torch.log(torch.tensor([40 / 37, 60 / 58]))
    _, parts = loss(raws, [target], 416)
    assert parts["box"] == pytest.approx(0.0, abs=1e-8) and parts["obj"] > 0


def test_predictions_overlapping_a_ground_truth_are_not_negatives():
    """Every cell of the stride-32 output confidently predicts its anchors' boxes on its centre; those
    overlapping the ground truth by more than ignore_thresh cost no objectness loss, so a lower
    threshold ignores more of them, and the assigned cell counts whatever the threshold."""
    raws = _raws(fill=-6.0)
    with torch.no_grad():
        raws[0].view(1, 3, 7, 13, 13)[:, :, :4] = 0.0  # each box: its anchor's shape on its cell's centre
        raws[0].view(1, 3, 7, 13, 13)[:, :, 4] = 6.0
    target = [_target([208 - 172, 208 - 160, 208 + 172, 208 + 160])]  # anchor 2's shape, on cell (6, 6)'s centre
    obj = {t: YoloLoss(HEADS, LossConfig(ignore_thresh=t))(raws, target, 416)[1]["obj"] for t in (0.3, 0.7, 0.95)}
    assert obj[0.3] < obj[0.7] < obj[0.95]
    neg, pos = (torch.nn.functional.softplus(torch.tensor(v)).item() for v in (6.0, -6.0))  # BCE of logit 6 at 0 / 1
    # at 0.95 only the exact box (the assigned cell, target 1) overlaps enough: every other cell of both
    # outputs is a negative (stride 32: logit 6; stride 16: logit -6)
    assert obj[0.95] == pytest.approx((3 * 13 * 13 - 1) * neg + pos + 3 * 26 * 26 * pos, rel=1e-6)
    assert obj[0.3] > pos


def test_label_smoothing_raises_the_class_loss_of_a_perfect_prediction():
    raws = _raws()
    target = [_target([80, 170, 120, 230])]
    (_, pos16) = assign(target, HEADS, GRIDS, SIZE)
    with torch.no_grad():
        cell = raws[1].view(1, 3, 7, 26, 26)[0, pos16.anchor.item(), :, pos16.row.item(), pos16.col.item()]
        cell[5], cell[6] = 10.0, -10.0
    plain = YoloLoss(HEADS, LossConfig())(raws, target, 416)[1]["cls"]
    smooth = YoloLoss(HEADS, LossConfig(label_smoothing=0.1))(raws, target, 416)[1]["cls"]
    assert plain < 1e-3 and smooth > 10 * plain


def test_bad_loss_options_are_one_line():
    cases = [(dict(box_loss="iou"), "box_loss='iou' is not allowed; choose one of mse, giou, diou, ciou"),
             (dict(ignore_thresh=1.5), "ignore_thresh=1.5 must lie in"),
             (dict(iou_thresh=0.0), "iou_thresh=0.0 must be > 0")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            LossConfig(**kwargs)
    assert math.isfinite(float(YoloLoss(HEADS)(_raws(2), [_target(), _target()], 416)[0]))  # no boxes at all
