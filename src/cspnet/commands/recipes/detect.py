"""``--task detect``: one-stage detection on the shared driver (COCO or YOLO-layout data; COCO
mAP; boxes drawn on the images). A model to evaluate is a cspnet checkpoint, a registered detector
(``--model``, random or converted weights) or a darknet cfg with its weights (``--cfg --weights``,
run as darknet's own network)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from ...checkpoint import atomic_write_json
from ...data import (
    DETECT_SPEC_HELP,
    DetectionDataset,
    DetectionSource,
    Letterbox,
    collate_detection,
    image_paths,
    load_detection_source,
)
from ...data.detect_augment import MULTI_SCALE, Augment, DetectionTrainSet, MultiScaleCollate, eval_transforms
from ...data.images import read_images, to_channels
from ...detection.anchors import anchor_fit, box_shapes, format_anchors, kmeans_anchors
from ...detection.coco import class_names
from ...detection.detector import predict_images
from ...detection.draw import GRID_IMAGES, PREDICTED, draw_boxes, validation_grid
from ...detection.evaluate import per_class_table
from ...detection.loss import BOX_LOSSES, LossConfig
from ...detection.task import EVAL_CONF, EVAL_IOU, EVAL_MAX_DET, DetectionTask
from ...detection.zoo import detector_cfg
from ...engine.rundir import BEST, LAST
from ...errors import OptionError
from ..args import non_negative_float, positive_float, positive_int
from ..loading import load_checkpoint_model

PREDICT_CONF = 0.25
MOSAIC = 0.5
# darknet's iou_thresh of the "optimal" CSP cfgs: every anchor whose shape fits an object better than
# this also learns it. Measured on builtin (issue 14 note): mAP@0.5 after 6 epochs 0.19 with the best
# anchor only, 0.32 with 0.213, because each anchor's class scores are weights of their own.
IOU_THRESH = 0.213
# letterboxed training images up to this many bytes are decoded once and kept, and augmented in the
# training process: on 2 CPU cores loader workers fight the training step's threads for the cores
CACHE_BYTES = 1 << 30
PRETRAIN_EPOCHS = 8  # the builtin backbone pretraining: 96.7% top-1 on the digits in 16 s (the demo run)
# pinned: the recipe the demo's mAP was measured with (benchmarks/detect_train.md), not the moving defaults
PRETRAIN_RECIPE = ("--optimizer", "sgd", "--batch-size", "64", "--crop")


@dataclass
class EvalData:
    """A detection split ready to evaluate: letterboxed samples, the ground truth, the classes."""

    spec: str
    val: DetectionDataset
    classes: list[str]
    category_ids: list[int]
    ground_truth: dict
    img_size: int
    conf: float
    iou: float
    max_det: int


def _note(line: str) -> None:
    """A start-of-run remark on stderr, once per run (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


def _unit_interval(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1]")
    return value


@dataclass
class TrainData:
    """Both splits ready to train on, and what the driver reports of them."""

    source: DetectionSource
    train: DetectionTrainSet
    val: DetectionDataset
    img_size: int
    anchors: tuple | None  # k-means anchors replacing the model's, when those fit the data badly

    @property
    def classes(self) -> list[str]:
        return list(self.source.classes)


class DetectRecipe:
    name = "detect"
    default_model = "cspdarknet_tiny_fpn"  # learns the builtin set 1.6x faster than the PRN (issue 14 note)
    collate = staticmethod(collate_detection)
    data_help = DETECT_SPEC_HELP
    # measured on builtin (see the note of issue 14): AdamW at 1e-2 learns several times faster than 3e-3;
    # the default detector on builtin: 16 epochs reached mAP@0.5 0.82 in 7.4 min on 2 CPU cores, 20 epochs 0.91
    # in 10.8 min; 18 keeps a margin on both the figure and the time of the demo
    engine_defaults = {"epochs": 18, "batch_size": 32, "optimizer": "adamw", "lr": 1e-2, "warmup_epochs": 1.0}

    def add_options(self, p, verb: str) -> None:
        if verb == "train":
            p.add_argument("--box-loss", choices=BOX_LOSSES, default="mse",
                           help="detect: the box term: darknet's mse on offsets and log sizes, or an IoU loss "
                                "(giou: the paper's; diou, ciou) (default mse)")
            p.add_argument("--mosaic", type=_unit_interval, nargs="?", const=MOSAIC, default=0.0,
                           help=f"detect: probability of a four-image mosaic (--mosaic alone: {MOSAIC}; default 0)")
            p.add_argument("--multi-scale", action="store_true",
                           help="detect: darknet's random=1, each batch at a random multiple of the stride within "
                                f"{MULTI_SCALE[0]:g}-{MULTI_SCALE[1]:g}x the input size")
            p.add_argument("--iou-thresh", type=positive_float, default=None,
                           help="detect: darknet's iou_thresh: every anchor fitting an object's shape better than "
                                f"this learns it too (1 or more: the best anchor only) (default {IOU_THRESH}, the "
                                "optimal CSP cfgs')")
            p.add_argument("--backbone-checkpoint", default=None,
                           help="detect: start the backbone from a classification checkpoint (a cspnet train run, or "
                                "a timm or darknet model converted with cspnet convert); says which tensors loaded. "
                                f"'builtin': train it first on the built-in digits ({PRETRAIN_EPOCHS} classification "
                                "epochs, in RUN_DIR/backbone; the stand-in for the paper's ImageNet start), the "
                                "default with --data builtin; 'none': from scratch, the default otherwise")
        if verb in ("val", "predict"):
            p.add_argument("--cfg", default=None, help="detect: a darknet .cfg to run as it is (with --weights)")
            p.add_argument("--weights", default=None, help="detect: the darknet .weights file of --cfg")
            default = EVAL_CONF if verb == "val" else PREDICT_CONF
            p.add_argument("--conf", type=_unit_interval, default=None,
                           help=f"detect: keep boxes whose objectness x class probability exceeds this "
                                f"(default {default:g} for {verb})")
            p.add_argument("--iou", type=_unit_interval, default=EVAL_IOU, help=f"detect: NMS IoU (default {EVAL_IOU})")
            p.add_argument("--max-det", type=positive_int, default=EVAL_MAX_DET,
                           help=f"detect: boxes kept per image (default {EVAL_MAX_DET})")

    # --- train --------------------------------------------------------------------------------

    def train_data(self, args, in_chans: int | None) -> TrainData:
        if in_chans not in (None, 3):
            raise OptionError("detectors read RGB images; drop {in_chans}", in_chans=in_chans)
        cfg = detector_cfg(args.model).override(dict(args.model_args))
        source = load_detection_source(args.data)
        if source.num_warnings:
            _note(f"warning: {source.summary()}")
        if not source.train or not source.val:
            raise ValueError(f"{args.data}: detection training needs images in both splits "
                             f"({len(source.train)} train, {len(source.val)} val)")
        size = args.img_size or cfg.img_size
        if size % 32:  # every zoo detector's coarsest stride
            raise OptionError("{img_size} must be a multiple of 32", img_size=size)
        if args.iou_thresh is None:
            args.iou_thresh = IOU_THRESH
        hflip = (0.0 if args.data == "builtin" else 0.5) if args.hflip is None else args.hflip
        augment = Augment(hflip=hflip, mosaic=args.mosaic)
        anchors = self._check_anchors(args, source, cfg, size)
        cache = len(source.train) * 3 * size * size <= CACHE_BYTES
        return TrainData(source, DetectionTrainSet(source.train, size, augment, cache=cache),
                         DetectionDataset(source.val, eval_transforms(size)), size, anchors)

    @staticmethod
    def _check_anchors(args, source: DetectionSource, cfg, size: int):
        """Say how the model's anchors fit the training boxes; replace them by k-means ones when
        fewer than GOOD_RECALL of the boxes are reachable, unless weights or anchors were given."""
        wh = box_shapes(source.train, size)
        if not len(wh):
            return None
        fit = anchor_fit(wh, cfg.used_anchors())
        line = (f"anchors: {fit.recall:.1%} of {fit.boxes} training boxes reachable, mean best IoU "
                f"{fit.mean_iou:.3f} at {size} px")
        keep = fit.good or args.checkpoint or args.resume or "anchors" in dict(args.model_args)
        if keep:
            _note(line + ("" if fit.good else "; they fit badly: see `cspnet anchors`"))
            return None
        new = kmeans_anchors(wh, len(cfg.anchors))
        better = anchor_fit(wh, cfg.used_anchors(new))
        _note(f"{line}; they fit badly, using k-means anchors {format_anchors(new)} ({better.recall:.1%}, "
              f"mean IoU {better.mean_iou:.3f})")
        anchors = tuple(tuple(int(v) for v in a) for a in new.tolist())
        args.model_args = [*args.model_args, ("anchors", anchors)]  # saved with the run, so --resume keeps them
        return anchors

    def in_memory(self, data) -> bool:
        """Whether the training images are cached (``CACHE_BYTES``): then no loader workers.
        Evaluation data (:class:`EvalData`) decodes in workers."""
        return isinstance(data, TrainData) and data.train.cache is not None

    def model_kwargs(self, data: TrainData) -> dict:
        return {"num_classes": len(data.classes), "img_size": data.img_size}

    def pretraining(self, args, run_dir: Path, dist) -> list[str] | None:
        """The ``cspnet train`` arguments of the backbone's classification pretraining that
        ``--backbone-checkpoint builtin`` asks for (run by the driver before :meth:`prepare_model`),
        or None. Resolves the option's default, so the run saves what it did."""
        spec = args.backbone_checkpoint
        if spec is None:
            spec = "builtin" if args.data == "builtin" and not args.checkpoint and not dist.enabled else "none"
        args.backbone_checkpoint = spec
        if spec != "builtin":
            return None
        if dist.enabled:
            raise OptionError("{backbone_checkpoint} pretrains in one process; under torchrun, pretrain first "
                              "(cspnet train --model BACKBONE --in-chans 3) and pass its run directory",
                              backbone_checkpoint="builtin")
        cfg = detector_cfg(args.model).override(dict(args.model_args))
        out = run_dir / "backbone"
        args.backbone_checkpoint = str(out / BEST)
        _note(f"backbone: pretraining {cfg.backbone} on the built-in digits ({PRETRAIN_EPOCHS} classification epochs, "
              f"in {out}; --backbone-checkpoint none starts from scratch)")
        sets = [a for k, v in cfg.backbone_args for a in ("--set", f"{k}={json.dumps(v)}")]
        return ["--task", "classify", "--model", cfg.backbone, "--in-chans", "3", "--data", "builtin",
                "--epochs", str(PRETRAIN_EPOCHS), "--seed", str(args.seed), "--out", str(out),
                *PRETRAIN_RECIPE,
                *(["--device", args.device] if args.device else []), *(["--quiet"] if args.quiet else []), *sets]

    def prepare_model(self, args, model) -> None:
        if args.backbone_checkpoint in (None, "none"):
            return
        from ...engine import resolve_checkpoint

        path = resolve_checkpoint(args.backbone_checkpoint)
        report = model.load_backbone(path)
        n_own = len(report["loaded"]) + len(report["missing"])
        line = f"backbone: loaded {len(report['loaded'])} of {n_own} tensors from {path}"
        for key in ("missing", "mismatched", "unused"):
            if report[key]:
                line += f"; {key} {len(report[key])} (first: {report[key][0]})"
        _note(line)

    def task(self, args, data: TrainData, model) -> DetectionTask:
        smoothing = 0.0 if args.label_smoothing is None else args.label_smoothing
        dropped = {f"data_{kind.replace(' ', '_')}": n for kind, n in sorted(data.source.counts.items())}
        return DetectionTask(model.heads, data.img_size, data.source.coco_gt("val"), data.source.category_ids,
                             loss=LossConfig(box_loss=args.box_loss, label_smoothing=smoothing,
                                             iou_thresh=args.iou_thresh), data_log=dropped)

    def train_collate(self, args, data: TrainData, model):
        return MultiScaleCollate(data.img_size, max(model.strides)) if args.multi_scale else collate_detection

    def checkpoint_extra(self, args, data: TrainData) -> dict:
        return {"classes": data.classes, "data": args.data}

    def summary(self, data: TrainData) -> tuple[str, str]:
        boxes = sum(r.num_targets for r in data.source.train)
        return (f"3x{data.img_size}x{data.img_size}", f"{len(data.source.train)} train / {len(data.source.val)} val "
                f"images, {boxes} training boxes, {len(data.classes)} classes")

    def after_fit(self, trainer, data: TrainData, run_dir: Path) -> None:
        """The last evaluation's predictions.json, per_class_ap.md and pr_curve.png, and
        val_images.png: validation images with their true (green) and predicted (red) boxes."""
        evaluator = trainer.task.evaluator
        if evaluator is None:  # a finished run only rewriting its reports: nothing evaluated now
            return
        evaluator.save(run_dir, write_metrics=False)
        validation_grid(run_dir / "val_images.png", DetectionDataset(data.source.val[:GRID_IMAGES]),
                        evaluator.results(), data.classes, data.source.category_ids)

    def final_lines(self, final: dict, run_dir: Path) -> list[str]:
        return [f"best mAP@0.5:0.95 {final['best_map']:.4f} at epoch {final['best_epoch']} ({run_dir / BEST})",
                f"val mAP@0.5:0.95 {final['map']:.4f}  mAP@0.5 {final['map50']:.4f}  "
                f"(epoch {final['epoch']}, {run_dir / LAST})"]

    # --- the model ----------------------------------------------------------------------------

    def eval_model(self, args):
        """(model, metadata, path): a checkpoint, a darknet cfg + weights, or a registered detector."""
        if args.cfg or args.weights:
            if not (args.cfg and args.weights) or args.checkpoint:
                raise ValueError("a darknet network needs both --cfg and --weights, and no --checkpoint")
            from ...darknet import build, load_weights

            net = build(args.cfg, args.img_size)
            load_weights(net, args.weights)
            if not net.yolo_layers:
                raise ValueError(f"{args.cfg}: has no [yolo] layers; it is not a detector cfg")
            return net.eval(), {}, Path(args.cfg)
        if args.checkpoint:
            model, meta, path = load_checkpoint_model(args)
        elif args.model:
            from ...models import create_model

            model, meta, path = create_model(args.model).eval(), {}, Path(args.model)
        else:
            raise ValueError("name the detector to evaluate: --checkpoint, --model NAME or --cfg with --weights")
        if not hasattr(model, "heads"):
            raise ValueError(f"{path}: {getattr(model, 'model_name', None) or 'the model'} is not a detector; "
                             "use --task classify")
        return model, meta, path

    # --- val ----------------------------------------------------------------------------------

    def eval_data(self, args, spec: str, model, meta: dict, path: Path) -> EvalData:
        source = load_detection_source(spec, splits=("val",))
        if source.num_warnings:
            print(f"warning: {source.summary()}")
        size = self.img_size(args, model)
        if model.num_classes != len(source.classes):
            if meta or args.cfg:
                raise ValueError(f"{path}: the detector predicts {model.num_classes} classes, {spec} has "
                                 f"{len(source.classes)}; evaluate on the data it was trained for")
            model.reset_classifier(len(source.classes))  # a registered detector with random weights
        if meta.get("classes") and list(meta["classes"]) != list(source.classes):
            raise ValueError(f"{path}: the detector's classes {meta['classes']} differ from {spec}'s {source.classes}")
        transforms = v2.Compose([Letterbox(size), v2.ToDtype(torch.float32, scale=True)])
        val = DetectionDataset(source.val, transforms)
        conf = EVAL_CONF if args.conf is None else args.conf
        return EvalData(spec, val, list(source.classes), list(source.category_ids), source.coco_gt("val"), size,
                        conf, args.iou, args.max_det)

    @staticmethod
    def img_size(args, model) -> int:
        size = args.img_size or model.img_size
        stride = max(getattr(model, "strides", None) or [32])
        if size % stride:
            raise OptionError(f"{{img_size}} must be a multiple of the detector's stride {stride}", img_size=size)
        return size

    def eval_task(self, data: EvalData, model) -> DetectionTask:
        return DetectionTask(model.heads, data.img_size, data.ground_truth, data.category_ids, data.conf, data.iou,
                             data.max_det)

    def val_metrics(self, metrics: dict) -> dict:
        return {k: metrics[k] for k in ("map", "map50", "map75", "maps", "mapm", "mapl", "ar100", "per_class")}

    def val_line(self, metrics: dict) -> str:
        return f"val mAP@0.5:0.95 {metrics['map']:.4f}  mAP@0.5 {metrics['map50']:.4f}"

    def write_val_files(self, out: Path, task: DetectionTask, metrics: dict) -> None:
        """predictions.json (COCO results), per_class_ap.md and pr_curve.png beside metrics.json."""
        task.evaluator.save(out, metrics, write_metrics=False)
        print(per_class_table(metrics), end="")

    # --- predict ------------------------------------------------------------------------------

    def files(self, items: list[str]) -> list[str]:
        return image_paths(items)

    def predict(self, args, model, meta: dict, files: list[str], device, optimize) -> None:
        """Draw each image's boxes into ``--out`` and write every detection to detections.json;
        every file is read (an unreadable one skipped with a warning) before the model runs."""
        from ...plots import save_image
        from ..driver import RUNS, _numbered_dir, _safe_name

        files, images = read_images(files, lambda img: to_channels(img, 3))
        size = self.img_size(args, model)
        names = class_names(model.num_classes, meta.get("classes"))
        conf = PREDICT_CONF if args.conf is None else args.conf
        model = model.to(device).eval()
        dets = predict_images(model, model.heads, images, size, conf, args.iou, args.max_det, args.batch_size)
        out = Path(args.out) if args.out else _numbered_dir(RUNS / "predict" / _safe_name(
            getattr(model, "model_name", None) or "detect"))
        out.mkdir(parents=True, exist_ok=True)
        report = []
        for path, img, det in zip(files, images, dets, strict=True):
            pairs = zip(det["labels"].tolist(), det["scores"].tolist(), strict=True)
            labels = [f"{names[c]} {s:.2f}" for c, s in pairs]
            drawn = draw_boxes(v2.functional.pil_to_tensor(img), det["boxes"], labels, PREDICTED)
            save_image(drawn, out / (Path(path).stem + ".png"))
            report.append({"file": str(path), "width": img.width, "height": img.height, "detections": [
                {"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label, "class": names[label]}
                for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                             strict=True)]})
            top = f" (best: {labels[0]})" if labels else ""
            print(f"{path}: {len(labels)} detection(s){top}")
        atomic_write_json(out / "detections.json", report)
        print(f"drawn images and detections.json in {out}")

