"""``cspnet export``: a model or checkpoint to a checked, single-file ONNX graph.

A detector is written with its decode in the graph (raw head maps, then boxes and scores per
anchor), ``--nms`` adds class-wise NMS with fixed-shape outputs, ``--raw`` keeps the raw maps only
(:mod:`cspnet.detection.export`); the checks compare every kind of output with PyTorch.
"""

from __future__ import annotations

import sys

from .args import positive_float, positive_int

CLASSIFIER_TOL, DETECTOR_TOL = 1e-3, 1e-4
NMS_DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 300}


def add_parser(sub) -> None:
    from ..inference.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = sub.add_parser(
        "export",
        help="export to ONNX, then check it in ONNX Runtime and OpenCV DNN",
        description="Writes one .onnx file and runs it in onnxruntime and OpenCV DNN on the same input as "
                    "PyTorch; a failing engine or a difference over --tol exits with status 1. A detector "
                    "is written with its decode in the graph (raw head maps, boxes xyxy in input pixels, "
                    "scores = objectness x class probability per anchor); --nms adds NMS.",
    )
    p.add_argument("model", metavar="MODEL|CHECKPOINT", help="a model name (`cspnet list`) or a cspnet checkpoint")
    p.add_argument("--checkpoint", default=None, help="weights for MODEL (.safetensors/.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    p.add_argument("--dynamic-batch", action="store_true", help="a variable batch dimension")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="input size (default: a detector's img_size, else the model's reference size, else 256)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--tol", type=positive_float, default=None,
                   help=f"largest accepted difference from PyTorch, relative to each output's scale "
                        f"(default {CLASSIFIER_TOL:g}; {DETECTOR_TOL:g} for detectors)")
    d = p.add_argument_group("detectors")
    d.add_argument("--nms", action="store_true",
                   help="end the graph with class-wise NMS: num_dets, det_boxes, det_scores, det_labels "
                        "(padded to --max-det; label -1 marks padding)")
    d.add_argument("--conf", type=float, default=None,
                   help=f"with --nms: the score threshold (default {NMS_DEFAULTS['conf']:g})")
    d.add_argument("--iou", type=float, default=None,
                   help=f"with --nms: the IoU over which a box is suppressed (default {NMS_DEFAULTS['iou']:g})")
    d.add_argument("--max-det", type=positive_int, default=None,
                   help=f"with --nms: detections kept per image (default {NMS_DEFAULTS['max_det']})")
    d.add_argument("--raw", action="store_true", help="the raw head maps only, no decode in the graph")
    p.set_defaults(func=run)


def _detector_options(args) -> dict:
    """The NMS options (checked before any model is built); one-line errors for misuse."""
    from ..detection.detector import check_thresholds
    from ..errors import NAME_ONLY, OptionError

    given = {k: getattr(args, k) for k in NMS_DEFAULTS if getattr(args, k) is not None}
    if args.raw and args.nms:
        raise OptionError("{raw} writes no decode to run NMS on; drop {nms} or {raw}", raw=NAME_ONLY, nms=NAME_ONLY)
    if given and not args.nms:
        name = next(iter(given))
        raise OptionError(f"{{{name}}} applies only with {{nms}}", **{name: given[name]}, nms=NAME_ONLY)
    options = {**NMS_DEFAULTS, **given}
    check_thresholds(**options)
    return options


def run(args) -> int:
    import torch

    from ..detection import Detector
    from ..errors import NAME_ONLY, OptionError
    from ..inference.export import check_opset, check_output_path, export_onnx
    from ..models.spec import check_img_size, default_img_size, input_channels, load_model

    check_opset(args.opset)  # cheap checks first: no model is built for a bad command line
    check_output_path(args.output)
    options = _detector_options(args)
    model = load_model(args.model, args.checkpoint, args.num_classes)
    if isinstance(model, Detector):
        from ..detection.export import DECODED, RAW, export_detector

        size = check_img_size(model, args.img_size or model.img_size)
        result = export_detector(model, args.output, img_size=size, batch_size=args.batch_size,
                                 form=RAW if args.raw else DECODED, nms=args.nms, **options, opset=args.opset,
                                 dynamic_batch=args.dynamic_batch, simplify=args.simplify,
                                 tol=args.tol or DETECTOR_TOL)
    else:
        used = next((k for k in ("nms", "raw", *NMS_DEFAULTS) if getattr(args, k) not in (None, False)), None)
        if used:
            raise OptionError(f"{{{used}}} applies to detectors; {args.model} is not one",
                              **{used: NAME_ONLY if isinstance(getattr(args, used), bool) else getattr(args, used)})
        size = check_img_size(model, args.img_size or default_img_size(model))
        x = torch.randn(args.batch_size, input_channels(model), size, size,
                        generator=torch.Generator().manual_seed(0))
        result = export_onnx(model, x, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                             simplify=args.simplify, tol=args.tol or CLASSIFIER_TOL)
    print(result.summary())
    if not result.ok:
        failed = [c.engine for c in result.checks if not c.ok(result.tol)]
        print(f"cspnet export: error: the check failed in {', '.join(failed)}; {args.output} was kept for "
              "inspection", file=sys.stderr)
        return 1
    return 0
