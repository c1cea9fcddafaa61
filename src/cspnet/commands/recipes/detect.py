"""``--task detect``: one-stage detection on the shared driver (COCO or YOLO-layout data; COCO
mAP; boxes drawn on the images). A model to evaluate is a cspnet checkpoint, a registered detector
(``--model``, random or converted weights) or a darknet cfg with its weights (``--cfg --weights``,
run as darknet's own network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from ...checkpoint import atomic_write_json
from ...data import DETECT_SPEC_HELP, DetectionDataset, Letterbox, collate_detection, image_paths, load_detection_source
from ...data.images import open_image, to_channels
from ...detection.coco import class_names
from ...detection.detector import predict_images
from ...detection.evaluate import per_class_table
from ...detection.task import EVAL_CONF, EVAL_IOU, EVAL_MAX_DET, DetectionTask
from ...errors import OptionError
from ..args import non_negative_float, positive_int
from ..loading import load_checkpoint_model

PREDICT_CONF = 0.25


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


def _unit_interval(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1]")
    return value


class DetectRecipe:
    name = "detect"
    default_model = "cspdarknet_tiny_prn"
    collate = staticmethod(collate_detection)
    data_help = DETECT_SPEC_HELP

    def add_options(self, p, verb: str) -> None:
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

    def in_memory(self, data) -> bool:
        return False

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
        every file is read (and a bad one refused) before the model runs."""
        from torchvision.utils import draw_bounding_boxes

        from ...plots import save_image
        from ..driver import RUNS, _numbered_dir, _safe_name

        images = [to_channels(open_image(p), 3) for p in files]
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
            pixels = v2.functional.pil_to_tensor(img)
            drawn = draw_bounding_boxes(pixels, det["boxes"], labels, colors="red", width=2) if labels else pixels
            save_image(drawn, out / (Path(path).stem + ".png"))
            report.append({"file": str(path), "width": img.width, "height": img.height, "detections": [
                {"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label, "class": names[label]}
                for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                             strict=True)]})
            top = f" (best: {labels[0]})" if labels else ""
            print(f"{path}: {len(labels)} detection(s){top}")
        atomic_write_json(out / "detections.json", report)
        print(f"drawn images and detections.json in {out}")

