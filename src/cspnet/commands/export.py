"""``cspnet export``: a model or checkpoint to a checked, single-file ONNX graph."""

from __future__ import annotations

import sys

from .args import positive_float, positive_int


def add_parser(sub) -> None:
    from ..inference.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = sub.add_parser(
        "export",
        help="export to ONNX, then check it in ONNX Runtime and OpenCV DNN",
        description="Writes one .onnx file and runs it in onnxruntime and OpenCV DNN on the same input as "
                    "PyTorch; a failing engine or a difference over --tol exits with status 1.",
    )
    p.add_argument("model", metavar="MODEL|CHECKPOINT", help="a model name (`cspnet list`) or a cspnet checkpoint")
    p.add_argument("--checkpoint", default=None, help="weights for MODEL (.safetensors/.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    p.add_argument("--dynamic-batch", action="store_true", help="a variable batch dimension")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="input size (default: the model's reference size, else 256)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--tol", type=positive_float, default=1e-3, help="largest accepted difference from PyTorch")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..inference.export import check_opset, check_output_path, export_onnx
    from ..models.spec import check_img_size, default_img_size, input_channels, load_model

    check_opset(args.opset)  # cheap checks first: no model is built for a bad command line
    check_output_path(args.output)
    model = load_model(args.model, args.checkpoint, args.num_classes)
    size = check_img_size(model, args.img_size or default_img_size(model))
    x = torch.randn(args.batch_size, input_channels(model), size, size, generator=torch.Generator().manual_seed(0))
    result = export_onnx(model, x, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                         simplify=args.simplify, tol=args.tol)
    print(result.summary())
    if not result.ok:
        failed = [c.engine for c in result.checks if not c.ok(result.tol)]
        print(f"cspnet export: error: the check failed in {', '.join(failed)}; {args.output} was kept for "
              "inspection", file=sys.stderr)
        return 1
    return 0
