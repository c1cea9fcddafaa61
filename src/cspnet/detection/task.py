"""Detection as a task of the shared engine (:class:`cspnet.engine.Task`): its loss is YOLO's
(:mod:`.loss`), its evaluation COCO's mAP over the whole split, every rank's predictions gathered
before scoring.

Batches come from :func:`cspnet.data.collate_detection` over letterboxed images: each target keeps
``image_id``, ``orig_size`` and the ``letterbox`` parameters, so the predictions are mapped back to
each image's own pixels before they are scored against the file's boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.detect import unletterbox_boxes
from ..engine.distributed import DistInfo, all_gather_objects, all_reduce_sum
from .evaluate import CocoEvaluator
from .loss import LossConfig, YoloLoss
from .yolo_decode import YoloHead, decode, nms

EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.45, 300  # mAP wants every box; darknet's NMS threshold


class DetectionTask:
    """What the engine asks of a task, for a detector with output ``heads`` on ``img_size`` inputs.

    ``ground_truth`` (a COCO dict) and ``category_ids`` (class index -> COCO category id) are the
    split's, as :meth:`cspnet.data.DetectionSource.coco_gt` and ``.category_ids`` give them. After an
    evaluation, ``evaluator`` holds the predictions (for the results files and the PR curve).
    ``data_log`` (e.g. the number of boxes dropped reading the data) is repeated in every results row.
    """

    name = "detect"
    main_metric = "map"
    plot_panels = {"loss": ["train_loss", "val_loss"], "loss components (train)": ["box_loss", "obj_loss", "cls_loss"],
                   "mAP": ["val_map", "val_map50"], "learning rate": ["lr"]}

    def __init__(self, heads: Sequence[YoloHead], img_size: int, ground_truth: dict, category_ids: Sequence[int],
                 conf: float = EVAL_CONF, iou: float = EVAL_IOU, max_det: int = EVAL_MAX_DET,
                 loss: LossConfig | None = None, data_log: dict[str, float] | None = None):
        self.heads, self.img_size = list(heads), int(img_size)
        self.ground_truth, self.category_ids = ground_truth, list(category_ids)
        self.conf, self.iou, self.max_det = conf, iou, max_det
        if self.heads[0].num_classes != len(self.category_ids):
            raise ValueError(f"the detector predicts {self.heads[0].num_classes} classes, the data has "
                             f"{len(self.category_ids)}")
        self.evaluator: CocoEvaluator | None = None
        self.yolo_loss = YoloLoss(self.heads, loss or LossConfig())
        self.loss_parts: dict[str, float] = {}  # the last step's
        self.data_log = dict(data_log or {})
        self._sums: dict[str, float] = {}
        self._steps = 0

    def targets_to(self, targets, device: torch.device):
        """Boxes and labels to the device (the loss reads them there); the rest stays as it is."""
        return [{k: v.to(device) if k in ("boxes", "labels") else v for k, v in t.items()} for t in targets]

    def loss(self, model, inputs: torch.Tensor, targets) -> torch.Tensor:
        total, self.loss_parts = self.yolo_loss(model(inputs), targets, tuple(inputs.shape[-2:]))
        for k, v in self.loss_parts.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps += 1
        return total

    def epoch_log(self) -> dict[str, float]:
        """``box_loss``, ``obj_loss``, ``cls_loss``: the epoch's mean per image; then ``data_log``."""
        out = {f"{k}_loss": v / max(self._steps, 1) for k, v in self._sums.items()}
        self._sums, self._steps = {}, 0
        return {**out, **self.data_log}

    def eval_start(self, device: torch.device) -> dict:
        """The predictions so far and the loss sum and image count (the validation loss)."""
        return {"coco": CocoEvaluator(self.ground_truth, self.category_ids),
                "loss": torch.zeros(2, dtype=torch.float64, device=device)}

    def eval_update(self, state: dict, outputs, targets) -> None:
        size = (self.img_size, self.img_size)
        state["loss"] += torch.stack([self.yolo_loss(outputs, targets, size)[0].double() * len(targets),
                                      state["loss"].new_tensor(len(targets))])
        for det, target in zip(nms(decode(outputs, self.heads, size), self.conf, self.iou, self.max_det), targets,
                               strict=True):
            boxes = unletterbox_boxes(det["boxes"].float().cpu(), target["letterbox"], target["orig_size"])
            state["coco"].update(target["image_id"], boxes, det["scores"].float().cpu(), det["labels"].cpu())

    def eval_finish(self, state: dict, dist: DistInfo) -> dict:
        """COCO metrics of every rank's predictions (scored once, the same on every rank) and the loss."""
        evaluator = state["coco"]
        if dist.enabled:
            evaluator.set_results([r for part in all_gather_objects(evaluator.results(), dist) for r in part])
        metrics = evaluator.summarize()
        self.evaluator = evaluator
        loss, n = all_reduce_sum(state["loss"], dist).tolist()
        summary = {k: (v if v is not None else float("nan")) for k, v in metrics.items()
                   if k in ("map", "map50", "map75", "maps", "mapm", "mapl", "ar100")}
        return {**summary, "loss": loss / max(n, 1), "images": metrics["num_images"],
                "predictions": metrics["num_predictions"], "per_class": metrics["per_class"]}

    def summary(self, metrics: dict) -> str:
        return f"mAP@0.5:0.95 {metrics['map']:.4f}  mAP@0.5 {metrics['map50']:.4f}"
