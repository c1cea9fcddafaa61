"""``cspnet export``: a model or checkpoint to a checked, single-file ONNX graph, or an OpenVINO IR
(``--format openvino``); ``--int8 --calib-data SPEC`` writes either quantized, with its accuracy cost.

A detector is written with its decode in the graph (raw head maps, then boxes and scores per
anchor), ``--nms`` adds class-wise NMS with fixed-shape outputs, ``--raw`` keeps the raw maps only
(:mod:`cspnet.detection.export`); the checks compare every kind of output with PyTorch.
"""

from __future__ import annotations

import sys

from .args import IMG_SIZE_HELP, img_size, positive_float, positive_int

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
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx",
                   help="onnx (checked in onnxruntime and OpenCV) or openvino (an IR .xml + .bin, checked in "
                        "OpenVINO; the inference extra)")
    p.add_argument("--output", "-o", required=True, help="the file to write: .onnx, or .xml for --format openvino")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    p.add_argument("--dynamic-batch", action="store_true", help="a variable batch dimension")
    p.add_argument("--img-size", type=img_size, default=None,
                   help="input size (default: a detector's img_size, else the model's reference size, else 256; "
                        + IMG_SIZE_HELP + ")")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--tol", type=positive_float, default=None,
                   help=f"largest accepted difference from PyTorch, relative to each output's scale "
                        f"(default {CLASSIFIER_TOL:g}; {DETECTOR_TOL:g} for detectors)")
    q = p.add_argument_group("int8 (classifiers)")
    q.add_argument("--int8", action="store_true",
                   help="quantize to int8 (ONNX Runtime's static quantization, QDQ; --format openvino writes that "
                        "graph as an IR); reports top-1 of fp32 and int8 on the validation split")
    q.add_argument("--calib-data", default=None, metavar="SPEC",
                   help="with --int8: the data (as for `cspnet train --data`) whose train split calibrates and "
                        "whose validation split measures the accuracy cost")
    q.add_argument("--calib-size", type=positive_int, default=300,
                   help="with --int8: calibration images, spread over the train split (default 300)")
    q.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                   help="with --int8: refuse (exit 2, nothing written) if top-1 drops by more than this")
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


def _int8_options(args) -> None:
    """One-line errors for int8 flags that do not fit together (before any model is built)."""
    from ..errors import NAME_ONLY, OptionError
    from ..inference.int8 import backend_missing

    given = next((k for k in ("calib_data", "max_drop") if getattr(args, k) is not None), None)
    if not args.int8:
        if given:
            raise OptionError(f"{{{given}}} applies only with {{int8}}", **{given: getattr(args, given)},
                              int8=NAME_ONLY)
        return
    if args.calib_data is None:
        raise OptionError("{int8} needs {calib_data}: the images to calibrate on (e.g. builtin, a folder)",
                          int8=NAME_ONLY, calib_data=NAME_ONLY)
    if args.max_drop is not None and args.max_drop < 0:
        raise OptionError("{max_drop} must be >= 0 (top-1 points)", max_drop=args.max_drop)
    reason = backend_missing("onnxruntime" if args.format == "onnx" else "openvino")
    if reason:
        raise OptionError(f"{{int8}} with {{format}}: {reason}", int8=NAME_ONLY, format=args.format)


def _export_int8(args, model, x):
    from ..checkpoint import read_metadata
    from ..inference.export import export_int8
    from ..inference.int8 import load_calibration
    from ..models.spec import looks_like_file

    ckpt = args.model if looks_like_file(args.model) else args.checkpoint
    preprocess = read_metadata(ckpt).get("preprocess") if ckpt else None
    calib, val = load_calibration(args.calib_data, x.shape[1], x.shape[-1], args.calib_size, preprocess)
    return export_int8(model, x, args.output, calib, val, fmt=args.format, max_drop=args.max_drop, opset=args.opset)


def _check_not_under_a_file(output: str) -> None:
    """An --output whose folder is an existing file is not a "missing directory": say so."""
    from pathlib import Path

    from ..errors import OptionError, printable

    parent = next((p for p in Path(output).parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OptionError(f"{{output}}: {printable(parent)} is a file, not a directory", output=printable(output))


def run(args) -> int:
    import torch

    from ..detection import Detector
    from ..errors import NAME_ONLY, OptionError
    from ..inference.export import check_opset, check_output_path, export_onnx, export_openvino
    from ..models.spec import check_img_size, default_img_size, input_channels, load_model

    check_opset(args.opset)  # cheap checks first: no model is built for a bad command line
    _check_not_under_a_file(args.output)
    check_output_path(args.output, ".xml" if args.format == "openvino" else ".onnx")
    options = _detector_options(args)
    _int8_options(args)
    if args.format == "openvino" and not args.int8:
        from ..inference.runtimes import missing

        reason = missing("openvino")
        if reason:
            raise OptionError(f"{{format}}: {reason}", format="openvino")
    model = load_model(args.model, args.checkpoint, args.num_classes)
    if isinstance(model, Detector) and (args.int8 or args.format != "onnx"):
        flag = {"int8": NAME_ONLY} if args.int8 else {"format": args.format}
        raise OptionError(f"{{{next(iter(flag))}}} is for classifiers; a detector exports as ONNX", **flag)
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
        if args.int8:
            result = _export_int8(args, model, x)
        elif args.format == "openvino":
            result = export_openvino(model, x, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                                     tol=args.tol or CLASSIFIER_TOL)
        else:
            result = export_onnx(model, x, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                                 simplify=args.simplify, tol=args.tol or CLASSIFIER_TOL)
    print(result.summary())
    if not result.ok:
        failed = [c.engine for c in result.checks if not c.ok(result.tol)]
        print(f"cspnet export: error: the check failed in {', '.join(failed)}; {args.output} was kept for "
              "inspection", file=sys.stderr)
        return 1
    return 0
