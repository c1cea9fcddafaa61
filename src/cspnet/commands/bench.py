"""``cspnet bench``: what models cost on this machine, engines side by side; ``--pairs``: each
baseline next to its CSP variant."""

from __future__ import annotations

from pathlib import Path

from .args import IMG_SIZE_HELP, img_size, positive_int


def add_parser(sub) -> None:
    from ..bench.engines import ENGINES

    p = sub.add_parser(
        "bench",
        help="params, FLOPs, latency, throughput and memory of models and inference engines",
        description="Times every MODEL x ENGINE round by round in a shuffled order (so machine noise hits all "
                    "alike) and reports latency at batch 1 (median, min, spread), throughput at --batch-size, "
                    "achieved GFLOP/s against this machine's measured fp32 matmul peak, and peak memory.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="model names or cspnet checkpoints")
    p.add_argument("--pairs", action="store_true",
                   help="the paper's comparisons: each baseline next to its CSP variant (no MODEL needed)")
    p.add_argument("--engine", nargs="+", choices=ENGINES, default=["torch"],
                   help="torch = our default path (cspnet.optimize_for_inference); several may be given")
    p.add_argument("--img-size", type=img_size, default=None,
                   help="input size (default: each model's reference size, else 256; " + IMG_SIZE_HELP + ")")
    p.add_argument("--batch-size", type=positive_int, default=16, help="batch for throughput and --train")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rounds", type=positive_int, default=25, help="timed rounds (after warm-up)")
    p.add_argument("--warmup", type=positive_int, default=3)
    p.add_argument("--pattern", choices=("loop", "sporadic"), default="loop",
                   help="the call pattern timed, and that our default path is optimized for: loop (calls back to "
                        "back) or sporadic (each call after 20 ms idle: a camera, a request stream)")
    p.add_argument("--calib-data", default=None, metavar="SPEC",
                   help="--engine int8: calibrate on this data's train split (default: random images, which "
                        "make its time meaningful but not its outputs)")
    p.add_argument("--train", action="store_true", help="also time a training step at --batch-size")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the memory probes (inference at batch 1, a training step at --batch-size)")
    p.add_argument("--vs-timm", action="store_true", help="also run timm's same architecture (timm_* models)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md")
    p.add_argument("--output", "-o", default=None, help="also write the table here")
    p.add_argument("--plot", default=None, help="--pairs: write the bar plot here (.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import atomic_write_bytes
    from ..inference.export import check_output_path

    for out, suffix in ((args.output, {"md": ".md", "csv": ".csv", "json": ".json"}[args.format]),
                        (args.plot, ".png")):
        if out is not None:
            check_output_path(out, suffix)
    if args.plot and not args.pairs:
        raise ValueError("--plot goes with --pairs")
    if args.pairs:
        from ..bench import format_pairs, plot_pairs, run_pairs

        if args.models:
            raise ValueError("--pairs takes no MODEL: it benchmarks the paper's pairs")
        result = run_pairs(engine=args.engine[0], img_size=args.img_size, batch_size=args.batch_size,
                           device=args.device, rounds=args.rounds, warmup=args.warmup)
        text = format_pairs(result, args.format)
        if args.plot:
            plot_pairs(result, Path(args.plot))
    else:
        from ..bench import format_result, run_bench

        if not args.models:
            raise ValueError("name at least one MODEL (see `cspnet list`), or use --pairs")
        if args.calib_data is not None and "int8" not in args.engine:
            raise ValueError("--calib-data goes with --engine int8")
        result = run_bench(args.models, tuple(args.engine), args.img_size, args.batch_size, args.device,
                           args.rounds, args.warmup, train=args.train, memory=args.memory,
                           vs_timm=args.vs_timm, pattern=args.pattern, calibration=args.calib_data)
        text = format_result(result, args.format)
    print(text, end="")
    if args.output:
        atomic_write_bytes(args.output, text.encode())
    return 0
