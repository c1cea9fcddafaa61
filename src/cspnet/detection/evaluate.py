"""COCO-style box evaluation: the numbers are pycocotools' own ``COCOeval`` (iouType ``bbox``), so they
match what papers and the COCO server report.

What this adds around it:

- predictions arrive per image as a model gives them (xyxy pixels, contiguous labels 0..C-1) and leave
  as COCO results with the *original* category ids, so a wrong label -> category mapping shows as a
  low AP instead of being hidden;
- the predictions are rounded once (:data:`BOX_DECIMALS`, :data:`SCORE_DECIMALS`) and evaluated as
  rounded, so the results JSON read back with ``COCO.loadRes`` gives exactly the same numbers;
- undefined values (pycocotools' -1: no ground truth for a class or an area range) become ``None``,
  never averaged in (pycocotools leaves them out of its means too); no predictions at all gives 0.0;
- pycocotools' printing is silenced, and the reports (results JSON, ``metrics.json``, a per-class
  table, a PR-curve PNG) are written atomically.

pycocotools and matplotlib are imported on first use, so ``cspnet.detection`` imports without them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..plots import pyplot, save_figure

BOX_DECIMALS = 2  # pixels: far below any IoU threshold's resolution
SCORE_DECIMALS = 5
FILES = {"results": "predictions.json", "metrics": "metrics.json", "table": "per_class_ap.md",
         "pr_curve": "pr_curve.png"}
# COCOeval.stats index of each summary metric
_STATS = {"map": 0, "map50": 1, "map75": 2, "maps": 3, "mapm": 4, "mapl": 5, "ar100": 8}


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(f"COCO evaluation needs pycocotools (pip install pycocotools): {e}") from None
    return COCO, COCOeval


def _defined(value) -> float | None:
    """pycocotools' -1 ("nothing to measure") as None, anything else as a plain float."""
    value = float(value)
    return None if value < 0 else value


def _coco(dataset: dict):
    COCO, _ = _pycocotools()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth(gt: dict) -> dict:
    """A checked copy (COCOeval writes into the annotations) with area and iscrowd filled in and
    annotation ids renumbered from 1: COCOeval takes a matched id of 0 for "unmatched"."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"ground truth has no {key!r} list")
    images = [dict(img) for img in gt["images"]]
    categories = [dict(cat) for cat in gt["categories"]]
    image_ids = {img["id"] for img in images}
    category_ids = {cat["id"] for cat in categories}
    annotations = []
    for i, ann in enumerate(gt["annotations"]):
        ann = copy.deepcopy(ann)
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"annotation {ann.get('id', i)}: image id {ann.get('image_id')!r} is not in images")
        if ann.get("category_id") not in category_ids:
            raise ValueError(f"annotation {ann.get('id', i)}: category id {ann.get('category_id')!r} is not in "
                             "categories")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"annotation {ann.get('id', i)}: bbox {bbox!r} is not [x, y, w, h]")
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann.setdefault("iscrowd", 0)
        ann["id"] = i + 1
        annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


def _class_map(category_ids, gt_categories: dict[int, str]) -> list[int]:
    if category_ids is None:
        return sorted(gt_categories)
    if isinstance(category_ids, Mapping):
        if sorted(category_ids) != list(range(len(category_ids))):
            raise ValueError(f"category_ids keys {sorted(category_ids)} are not the class indices 0..C-1")
        category_ids = [category_ids[i] for i in range(len(category_ids))]
    ids = [int(c) for c in category_ids]
    unknown = [c for c in ids if c not in gt_categories]
    if unknown:
        raise ValueError(f"category id {unknown[0]} is not in the ground truth's categories")
    if len(set(ids)) != len(ids):
        raise ValueError(f"category_ids {ids} map two classes to one category")
    return ids


class CocoEvaluator:
    """Accumulates one data set's predictions, then scores them with pycocotools.

    ``category_ids[i]`` is the COCO category id of class index ``i`` (default: the ground truth's
    category ids, sorted, the usual contiguous numbering). Every category of the ground truth is
    scored, predicted or not.
    """

    def __init__(self, ground_truth: dict, category_ids: Sequence[int] | Mapping[int, int] | None = None):
        self.ground_truth = _ground_truth(ground_truth)
        self.category_names = {cat["id"]: str(cat.get("name", cat["id"])) for cat in self.ground_truth["categories"]}
        self.category_ids = _class_map(category_ids, self.category_names)
        self.class_names = [self.category_names[c] for c in self.category_ids]
        self._image_ids = {img["id"] for img in self.ground_truth["images"]}
        self._gt = None  # the COCO object, made on first summarize
        self._results: list[dict] = []
        self.precision: np.ndarray | None = None  # COCOeval's [T=10 IoUs, R=101 recalls, K, A=4 areas, M=3]
        self.recall_thresholds: np.ndarray | None = None
        self.eval_category_ids: list[int] = []  # the K axis of precision
        self.summary: dict | None = None  # what the last summarize() returned, with that precision

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def reset(self) -> None:
        self._results = []
        self.precision = None
        self.summary = None

    def update(self, image_id, boxes, scores, labels) -> None:
        """Add one image's predictions: ``boxes`` (N, 4) xyxy in the image's pixels, ``scores`` (N,),
        ``labels`` (N,) class indices. Calling it again for an image adds to what it has."""
        with contextlib.suppress(TypeError):
            image_id = operator.index(image_id)  # a numpy or tensor integer as the JSON-ready int
        if image_id not in self._image_ids:
            raise ValueError(f"image id {image_id!r} is not in the ground truth")
        boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float64)
        scores = torch.as_tensor(scores).detach().to("cpu", torch.float64)
        labels = torch.as_tensor(labels).detach().to("cpu")
        n = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (n,) or labels.shape != (n,):
            raise ValueError(f"image {image_id!r}: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)} and labels "
                             f"{tuple(labels.shape)} are not (N, 4), (N,), (N,)")
        if n == 0:
            return
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"image {image_id!r}: labels are not whole class indices")
        labels = labels.long()
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise ValueError(f"image {image_id!r}: label {int(labels[bad][0])} is outside 0..{self.num_classes - 1}")
        if not torch.isfinite(boxes).all() or not torch.isfinite(scores).all():
            raise ValueError(f"image {image_id!r}: boxes or scores are not finite")
        wh = boxes[:, 2:] - boxes[:, :2]
        if (wh < 0).any():
            raise ValueError(f"image {image_id!r}: a box has x2 < x1 or y2 < y1 (boxes must be xyxy)")
        for (x1, y1), (w, h), s, c in zip(boxes[:, :2].tolist(), wh.tolist(), scores.tolist(), labels.tolist(),
                                          strict=True):
            self._results.append({
                "image_id": image_id,
                "category_id": self.category_ids[c],
                "bbox": [round(x1, BOX_DECIMALS), round(y1, BOX_DECIMALS), round(w, BOX_DECIMALS),
                         round(h, BOX_DECIMALS)],
                "score": round(s, SCORE_DECIMALS),
            })

    def results(self) -> list[dict]:
        """The predictions as a COCO results list (original category ids, bbox [x, y, w, h])."""
        return [dict(r, bbox=list(r["bbox"])) for r in self._results]

    def set_results(self, results: list[dict]) -> None:
        """Replace the predictions with a COCO results list (:meth:`results` of one or more evaluators,
        e.g. every rank's); the ids are checked as :meth:`update` checks them."""
        known = set(self.category_ids)
        for r in results:
            if r["image_id"] not in self._image_ids or r["category_id"] not in known:
                raise ValueError(f"result {r} names an image or category not in the ground truth")
        self._results = [dict(r, bbox=list(r["bbox"])) for r in results]

    def _detections(self):
        """The results as ``COCO.loadRes`` would make them (area w*h, ids from 1 in order, iscrowd 0),
        built here because loadRes fails on an empty list."""
        anns = [dict(r, bbox=list(r["bbox"]), area=r["bbox"][2] * r["bbox"][3], id=i + 1, iscrowd=0)
                for i, r in enumerate(self._results)]
        return _coco({"images": list(self.ground_truth["images"]), "annotations": anns,
                      "categories": copy.deepcopy(self.ground_truth["categories"])})

    def summarize(self) -> dict:
        """Scores what :meth:`update` collected: the :data:`_STATS` summary, ``per_class`` (AP and AP50
        per ground-truth category), ``num_images``, ``num_predictions``. Fractions 0..1, ``None`` where
        there is nothing to measure; plain values, ready for ``metrics.json``. Keeps :attr:`precision`."""
        _, COCOeval = _pycocotools()
        if self._gt is None:
            self._gt = _coco(copy.deepcopy(self.ground_truth))
        evaluator = COCOeval(self._gt, self._detections(), "bbox")
        metrics = run_cocoeval(evaluator)
        self.precision = evaluator.eval["precision"]
        self.recall_thresholds = np.asarray(evaluator.params.recThrs)
        self.eval_category_ids = [int(c) for c in evaluator.params.catIds]  # evaluate() made them numpy ints
        num_gt = {c: 0 for c in self.category_names}
        for ann in self.ground_truth["annotations"]:
            num_gt[ann["category_id"]] += not ann["iscrowd"]
        metrics["per_class"] = [
            {"class": self.category_names[c], "category_id": c, "num_gt": num_gt[c], **_class_ap(self.precision, k)}
            for k, c in enumerate(self.eval_category_ids)
        ]
        metrics["num_images"] = len(self._image_ids)
        metrics["num_predictions"] = len(self._results)
        self.summary = metrics
        return metrics

    def save(self, directory: str | os.PathLike, metrics: dict | None = None, write_metrics: bool = True) -> dict:
        """Writes :data:`FILES` into ``directory`` (``metrics.json`` unless ``write_metrics`` is False);
        returns the metrics (``metrics`` if given, else the last :meth:`summarize`'s, scoring now if
        nothing was scored yet)."""
        directory = Path(directory)
        if self.precision is None:  # the plot needs this evaluation's precision
            metrics = self.summarize()
        elif metrics is None:
            metrics = self.summary
        atomic_write_bytes(directory / FILES["results"], json.dumps(self._results, separators=(",", ":")).encode())
        if write_metrics:
            atomic_write_json(directory / FILES["metrics"], metrics)
        atomic_write_bytes(directory / FILES["table"], per_class_table(metrics).encode())
        plot_pr_curves(directory / FILES["pr_curve"], self.precision, self.recall_thresholds,
                       [self.category_names[c] for c in self.eval_category_ids], title=_title(metrics))
        return metrics


def run_cocoeval(evaluator) -> dict:
    """evaluate, accumulate and summarize a ready ``COCOeval``, silently; the summary metrics of
    :data:`_STATS` (``None`` for pycocotools' -1). Also scores a results file read with loadRes."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: _defined(evaluator.stats[i]) for name, i in _STATS.items()}


def _class_ap(precision: np.ndarray, k: int) -> dict:
    """AP@[.5:.95] and AP50 of category k over all areas at 100 detections, as COCOeval's summary
    takes them (the mean over entries > -1)."""

    def mean(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else None

    return {"ap": mean(precision[:, :, k, 0, -1]), "ap50": mean(precision[0, :, k, 0, -1])}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _title(metrics: dict) -> str:
    return f"PR curves at IoU 0.5 (mAP@0.5 = {_fmt(metrics.get('map50'))}, mAP@[.5:.95] = {_fmt(metrics.get('map'))})"


def per_class_table(metrics: dict) -> str:
    """Markdown: one row per category (``n/a`` where it has no ground truth), then the overall means."""
    lines = ["| class | category id | GT boxes | AP50 | AP@[.5:.95] |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in metrics.get("per_class", []):
        name = str(row["class"]).replace("|", "\\|")
        lines.append(f"| {name} | {row['category_id']} | {row['num_gt']} | {_fmt(row['ap50'])} | {_fmt(row['ap'])} |")
    total = sum(row["num_gt"] for row in metrics.get("per_class", []))
    lines.append(f"| **all** | | {total} | {_fmt(metrics.get('map50'))} | {_fmt(metrics.get('map'))} |")
    return "\n".join(lines) + "\n"


def plot_pr_curves(path: str | os.PathLike, precision: np.ndarray, recall: np.ndarray, names: Sequence[str],
                   title: str = "") -> None:
    """Precision vs recall at IoU 0.5 (all areas, 100 detections) per category with ground truth and
    their mean; a legend names the classes when there are few enough to read. Atomic PNG."""
    plt = pyplot()
    curves = [(name, precision[0, :, k, 0, -1]) for k, name in enumerate(names)]
    curves = [(name, p) for name, p in curves if (p > -1).all()]
    fig, ax = plt.subplots(figsize=(6, 5))
    few = len(curves) <= 12
    for name, p in curves:
        ax.plot(recall, p, lw=1, alpha=0.8 if few else 0.3, color=None if few else "grey",
                label=f"{name} {p.mean():.3f}" if few else None)
    if curves:
        mean = np.mean([p for _, p in curves], axis=0)
        ax.plot(recall, mean, lw=2.5, color="tab:blue" if not few else "black", label=f"all classes {mean.mean():.3f}")
        ax.legend(fontsize=7, loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)
