"""COCO box evaluation: hand-computed APs (101-point interpolation), class-id mapping, crowd regions,
area ranges, and the written reports read back."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("pycocotools")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from cspnet.detection.evaluate import FILES, CocoEvaluator, per_class_table, run_cocoeval  # noqa: E402

BOX = [0.0, 0.0, 100.0, 100.0]  # xyxy, 100 x 100


def approx(value):
    """pycocotools' precision is tp / (tp + fp + eps): a perfect score is 1 - 2e-16, not 1."""
    return pytest.approx(value, abs=1e-9)


def _gt(boxes, categories=((1, "thing"),), crowd=(), images=(1,)):
    """boxes: (image_id, category_id, xyxy); crowd: indices of boxes that are iscrowd."""
    anns = []
    for i, (image_id, cat, (x1, y1, x2, y2)) in enumerate(boxes):
        w, h = x2 - x1, y2 - y1
        anns.append({"id": i + 1, "image_id": image_id, "category_id": cat, "bbox": [x1, y1, w, h], "area": w * h,
                     "iscrowd": int(i in crowd)})
    return {"images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in images],
            "annotations": anns, "categories": [{"id": c, "name": n} for c, n in categories]}


def _evaluate(gt, predictions, category_ids=None):
    """predictions: image_id -> list of (xyxy, score, label)."""
    ev = CocoEvaluator(gt, category_ids)
    for image_id, preds in predictions.items():
        boxes = torch.tensor([p[0] for p in preds], dtype=torch.float32).reshape(-1, 4)
        ev.update(image_id, boxes, torch.tensor([p[1] for p in preds]), torch.tensor([p[2] for p in preds]).long())
    return ev, ev.summarize()


def _shifted(dx):
    x1, y1, x2, y2 = BOX
    return [x1 + dx, y1, x2 + dx, y2]


# --- hand-computed values -------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    gt = _gt([(1, 1, [10, 10, 60, 80]), (1, 2, [100, 50, 300, 200]), (2, 1, [0, 0, 40, 40]), (2, 2, BOX)],
             categories=((1, "a"), (2, "b")), images=(1, 2))
    preds = {img: [] for img in (1, 2)}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        preds[ann["image_id"]].append(([x, y, x + w, y + h], 1.0, ann["category_id"] - 1))
    _, m = _evaluate(gt, preds)
    assert [m[k] for k in ("map", "map50", "map75", "ar100")] == approx([1.0] * 4)
    assert [(r["class"], r["num_gt"]) for r in m["per_class"]] == [("a", 2), ("b", 2)]
    assert [(r["ap"], r["ap50"]) for r in m["per_class"]] == [approx((1.0, 1.0))] * 2
    assert m["num_images"] == 2 and m["num_predictions"] == 4


def test_a_known_iou_passes_the_thresholds_below_it():
    """Shifted 24 px, IoU = 76/124 = 0.613: a match at IoU 0.5, 0.55, 0.6 (AP 1 each: precision 1 at
    every recall point), a false positive from 0.65 on (AP 0), so AP@[.5:.95] = 3/10."""
    gt = _gt([(1, 1, BOX)])
    _, m = _evaluate(gt, {1: [(_shifted(24), 0.9, 0)]})
    assert m["map50"] == approx(1.0) and m["map75"] == 0.0
    assert m["map"] == approx(0.3)
    # shifted 20 px: IoU = 80/120 = 2/3 also passes 0.65
    _, m = _evaluate(gt, {1: [(_shifted(20), 0.9, 0)]})
    assert m["map"] == approx(0.4) and m["map75"] == 0.0


def test_a_higher_scored_false_positive_halves_ap():
    """One GT, ranked [FP, TP]: precision 0.5 at recall 1, carried back to every recall point -> 0.5.
    Ranked [TP, FP]: precision 1 at recall 1 already -> 1.0."""
    gt = _gt([(1, 1, BOX)])
    far = [300.0, 300.0, 400.0, 400.0]
    _, m = _evaluate(gt, {1: [(BOX, 0.6, 0), (far, 0.9, 0)]})
    assert m["map50"] == approx(0.5) and m["map"] == approx(0.5)
    _, m = _evaluate(gt, {1: [(BOX, 0.9, 0), (far, 0.6, 0)]})
    assert m["map50"] == approx(1.0)


def test_interpolated_precision_over_101_recall_points():
    """Three GT, ranked [TP, FP, TP, TP]: recall 1/3, 1/3, 2/3, 1 at precision 1, 1/2, 2/3, 3/4; the
    precision envelope is 1 up to recall 1/3 (recall points 0.00..0.33: 34 of them) and 3/4 after
    (67 points): AP = (34 + 67 * 0.75) / 101."""
    gts = [[0, 0, 50, 50], [100, 0, 150, 50], [200, 0, 250, 50]]
    gt = _gt([(1, 1, b) for b in gts])
    preds = [(gts[0], 0.9, 0), ([400, 400, 450, 450], 0.8, 0), (gts[1], 0.7, 0), (gts[2], 0.6, 0)]
    _, m = _evaluate(gt, {1: preds})
    assert m["map50"] == approx((34 + 67 * 0.75) / 101)


# --- class ids ------------------------------------------------------------------------------------


def test_non_contiguous_category_ids_and_an_offset_mapping():
    """Classes 0 and 1 are COCO categories 3 and 7: right labels give 1.0; labels off by one (the
    mistake a contiguous-vs-original id mix-up makes) give 0, not a silently good score."""
    gt = _gt([(1, 3, [0, 0, 50, 50]), (1, 7, [100, 100, 200, 200])], categories=((3, "cat"), (7, "dog")))
    right = {1: [([0, 0, 50, 50], 1.0, 0), ([100, 100, 200, 200], 1.0, 1)]}
    ev, m = _evaluate(gt, right, category_ids=[3, 7])
    assert m["map"] == approx(1.0) and ev.class_names == ["cat", "dog"]
    assert {r["category_id"] for r in ev.results()} == {3, 7}
    _, m_default = _evaluate(gt, right)  # default: the GT's category ids sorted
    assert m_default["map"] == approx(1.0)
    swapped = {1: [([0, 0, 50, 50], 1.0, 1), ([100, 100, 200, 200], 1.0, 0)]}
    _, m = _evaluate(gt, swapped, category_ids=[3, 7])
    assert m["map"] == 0.0 and m["map50"] == 0.0
    _, m = _evaluate(gt, right, category_ids={0: 7, 1: 3})  # the mapping given the wrong way round
    assert m["map"] == 0.0


def test_bad_inputs_are_one_line_errors():
    gt = _gt([(1, 3, BOX)], categories=((3, "cat"),))
    ev = CocoEvaluator(gt)
    with pytest.raises(ValueError, match=r"^image id 99 is not in the ground truth$"):
        ev.update(99, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="label 1 is outside 0..0"):
        ev.update(1, torch.tensor([BOX]), torch.tensor([0.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="must be xyxy"):
        ev.update(1, torch.tensor([[50.0, 50.0, 20.0, 20.0]]), torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(N, 4\), \(N,\), \(N,\)"):
        ev.update(1, torch.zeros(2, 4), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="category id 4 is not in the ground truth's categories"):
        CocoEvaluator(gt, category_ids=[4])
    with pytest.raises(ValueError, match="category_ids .* map two classes to one category"):
        CocoEvaluator(_gt([(1, 3, BOX)], categories=((3, "cat"), (4, "dog"))), category_ids=[3, 3])


# --- what counts ----------------------------------------------------------------------------------


def test_crowd_regions_are_neither_required_nor_false_positives():
    crowd = [200.0, 200.0, 300.0, 300.0]
    gt = _gt([(1, 1, BOX), (1, 1, crowd)], crowd=(1,))
    _, m = _evaluate(gt, {1: [(BOX, 0.5, 0)]})  # the crowd missed
    assert m["map"] == approx(1.0) and m["per_class"][0]["num_gt"] == 1
    _, m = _evaluate(gt, {1: [(BOX, 0.5, 0), ([210.0, 210.0, 260.0, 260.0], 0.9, 0)]})  # inside the crowd, ranked first
    assert m["map"] == approx(1.0)
    # the same region as an ordinary box: the missed one halves recall, AP = 51 of 101 recall points
    _, m = _evaluate(_gt([(1, 1, BOX), (1, 1, crowd)]), {1: [(BOX, 0.5, 0)]})
    assert m["map50"] == approx(51 / 101)


def test_a_prediction_on_an_image_without_objects_is_a_false_positive():
    gt = _gt([(1, 1, BOX)], images=(1, 2))
    _, m = _evaluate(gt, {1: [(BOX, 0.5, 0)], 2: [(BOX, 0.9, 0)]})
    assert m["map50"] == approx(0.5)


def test_no_predictions_score_zero_and_classes_without_gt_are_left_out():
    gt = _gt([(1, 1, BOX)], categories=((1, "a"), (2, "b")), images=(1, 2))
    ev, m = _evaluate(gt, {})
    assert m["num_predictions"] == 0 and ev.results() == []
    assert all(m[k] == 0.0 for k in ("map", "map50", "map75", "ar100", "mapl"))
    assert m["per_class"][0]["ap"] == 0.0 and m["per_class"][1]["ap"] is None
    ev.update(2, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))  # an image with nothing found
    assert ev.summarize()["map"] == 0.0
    _, m = _evaluate(gt, {1: [(BOX, 1.0, 0)]})  # "b" has no ground truth: not averaged in as 0
    assert m["map"] == approx(1.0) and m["per_class"][1] == {"class": "b", "category_id": 2, "num_gt": 0, "ap": None,
                                                     "ap50": None}


def test_small_medium_large():
    small, medium, large = [0, 0, 20, 20], [100, 100, 150, 150], [200, 200, 400, 400]  # 400, 2500, 40000 px^2
    _, m = _evaluate(_gt([(1, 1, small)]), {1: [(small, 1.0, 0)]})
    assert m["maps"] == m["map"] == approx(1.0) and m["mapm"] is None and m["mapl"] is None
    gt = _gt([(1, 1, b) for b in (small, medium, large)])
    _, m = _evaluate(gt, {1: [(small, 1.0, 0), (large, 1.0, 0)]})  # the medium one missed
    assert (m["maps"], m["mapm"], m["mapl"]) == approx((1.0, 0.0, 1.0))
    assert m["map"] == approx(67 / 101)  # recall 2/3 at precision 1: points 0.00..0.66


# --- the reports ----------------------------------------------------------------------------------


def test_the_written_results_read_back_with_loadres_give_the_same_metrics(tmp_path):
    torch.manual_seed(0)
    sizes = ((10, 20, 20, 25), (100, 100, 120, 80), (300, 200, 50, 50))  # small, large, medium
    gt_boxes = [(img, cat, [x, y, x + w, y + h]) for img in (1, 2, 3) for cat, (x, y, w, h) in
                zip((3, 7, 3), sizes, strict=True)]
    gt = _gt(gt_boxes, categories=((3, "cat"), (7, "dog")), images=(1, 2, 3, 4))
    ev = CocoEvaluator(gt)
    for img in (1, 2, 3, 4):  # the objects, jittered, with their classes, and 3 boxes anywhere with any class
        found = [(b, int(c == 7)) for i, c, b in gt_boxes if i == img]
        base = torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4)
        xy = torch.rand(3, 2) * 300
        boxes = torch.cat([base + torch.randn_like(base) * 3, torch.cat([xy, xy + 60], 1)])
        labels = torch.cat([torch.tensor([c for _, c in found], dtype=torch.long), torch.randint(0, 2, (3,))])
        ev.update(img, boxes, torch.rand(len(boxes)), labels)
    metrics = ev.save(tmp_path)
    assert 0.0 < metrics["map"] < metrics["map50"] < 1.0 and None not in (metrics["maps"], metrics["mapm"],
                                                                          metrics["mapl"])
    assert json.loads((tmp_path / FILES["metrics"]).read_text()) == metrics

    results = json.loads((tmp_path / FILES["results"]).read_text())
    assert results == ev.results() and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    stock = COCOeval(coco, coco.loadRes(str(tmp_path / FILES["results"])), "bbox")
    assert run_cocoeval(stock) == {k: metrics[k] for k in ("map", "map50", "map75", "maps", "mapm", "mapl", "ar100")}

    assert (tmp_path / FILES["pr_curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / FILES["table"]).read_text()
    assert table == per_class_table(metrics)
    assert "| cat | 3 | 6 |" in table and "| dog | 7 | 3 |" in table and "| **all** |" in table
    assert ev.precision.shape == (10, 101, 2, 4, 3)


def test_the_reports_of_an_empty_evaluation(tmp_path):
    ev = CocoEvaluator(_gt([(1, 1, BOX)], categories=((1, "a"), (2, "b"))))
    metrics = ev.save(tmp_path)
    assert metrics["map50"] == 0.0 and json.loads((tmp_path / FILES["results"]).read_text()) == []
    assert "| b | 2 | 0 | n/a | n/a |" in (tmp_path / FILES["table"]).read_text()
    assert (tmp_path / FILES["pr_curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(isinstance(v, float) and math.isnan(v) for v in metrics.values())
