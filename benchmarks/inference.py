"""Our default path (cspnet.optimize_for_inference) against ONNX Runtime and OpenVINO, in both call
patterns, at batch 1 and 16; int8 against the best exact fp32 path, and its accuracy cost on real data;
peleenet -> csppeleenet on the new default path.

    python benchmarks/inference.py              # writes benchmarks/inference.md (a quiet machine: ~2 h)
    python benchmarks/inference.py --runs 1     # one timing run instead of three (~50 min)
    python benchmarks/inference.py --quick      # smoke run: tiny models, few rounds, printed only

Each timing run is a fresh process (clean heap, threads, caches): our default path (``torch``), ONNX
Runtime, OpenVINO and the int8 engine on every model at batch 1 and 16, with the fp32 matmul that
measures the machine's peak, all timed in one interleaved, shuffled run per call pattern
(cspnet.inference.timing), so their ratios hold even if load changes; three runs give the ratios'
run-to-run range. Targets (issue 16): ours <= 1.0x the faster of ONNX Runtime and OpenVINO in every
cell; >= 95% of the fp32 matmul figure on the three large models; int8 <= 0.55x the best exact fp32
path on the three large models, top-1 within 0.5 point on Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cspnet.bench.child import machine_info, print_child_result, run_child
from cspnet.checkpoint import atomic_write_bytes

MODELS = ["cspresnext50", "cspdarknet53", "cspdensenet201", "csppeleenet"]
LARGE = MODELS[:3]
QUICK_MODELS = ["cspresnext_tiny", "csppeleenet_tiny"]
PATTERNS = ("loop", "sporadic")
PEERS = ("onnxruntime", "openvino")
BATCH = 16
PAIR, QUICK_PAIR = ("peleenet", "csppeleenet"), ("peleenet_tiny", "csppeleenet_tiny")
SHARED = Path(os.environ.get("CSPNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FASHION = SHARED / "data" / "classify" / "fashion_mnist"
# (label, `cspnet train` arguments): the models whose int8 accuracy cost is measured
ACCURACY_RUNS = [
    ("Fashion-MNIST (cspdarknet_tiny)", ["--model", "cspdarknet_tiny", "--data", str(FASHION), "--epochs", "15"]),
    ("built-in digits (the default model)", []),
]


# --- children: each run in a fresh process ---------------------------------------------------


def timing_run(models: list[str], img_size: int | None, rounds: int) -> dict:
    """One timing run: every pattern, its rows as plain dicts (what the parent tabulates)."""
    from cspnet.bench import run_bench

    out = {}
    for pattern in PATTERNS:
        engines = ("torch", *PEERS) + (("int8",) if pattern == "loop" else ())
        res = run_bench(models, engines, img_size=img_size, batch_size=BATCH, rounds=rounds, memory=False,
                        pattern=pattern)
        out[pattern] = {"peak": res.matmul_gflop_s, "rows": [
            {"model": r.model, "engine": r.engine, "size": r.img_size, "gflops": r.gflops, "b1": r.lat_ms,
             "bN": r.batch_ms, "note": r.note, "diff": r.max_diff, "setup": r.setup_s} for r in res.rows]}
    return out


def pairs_run(pair: tuple[str, str], img_size: int | None, rounds: int) -> str:
    from cspnet.bench import format_pairs, run_pairs

    return format_pairs(run_pairs((pair,), engine="torch", img_size=img_size, batch_size=BATCH, rounds=rounds,
                                  memory=False), "md")


def accuracy_run(checkpoint: str) -> list[dict]:
    """int8 (each backend) against fp32 on the checkpoint's data: calibrated on 300 train images,
    judged on the whole validation split."""
    import torch

    from cspnet.checkpoint import read_metadata
    from cspnet.inference.int8 import BACKENDS, accuracy_cost, backend_missing, int8_model, load_calibration
    from cspnet.inference.optimize import export_bytes
    from cspnet.models.spec import load_model

    meta = read_metadata(checkpoint)
    model = load_model(checkpoint)
    pre = meta["preprocess"]
    calib, val = load_calibration(meta["data"], pre["in_chans"], pre["img_size"], 300, pre)
    x = calib[0][0][:1]
    with torch.no_grad():
        template = model(x)
    rows = []
    for backend in BACKENDS:
        reason = backend_missing(backend)
        if reason:
            rows.append({"backend": backend, "skipped": reason})
            continue
        fn, _ = int8_model(backend, export_bytes(model, x, dynamic_batch=True), calib, template)
        acc = accuracy_cost(model, fn, val)
        rows.append({"backend": backend, "images": acc.images, "fp32": acc.top1_fp32, "int8": acc.top1_int8,
                     "agreement": acc.agreement})
    return rows


# --- the parent: tables --------------------------------------------------------------------


def _by(run: dict, pattern: str) -> dict:
    return {(r["model"], r["engine"]): r for r in run[pattern]["rows"]}


def _ratio(rows: dict, model: str, key: str) -> float | None:
    ours = rows.get((model, "torch"), {}).get(key)
    peers = [rows.get((model, e), {}).get(key) for e in PEERS]
    peers = [p for p in peers if p]
    return ours / min(peers) if ours and peers else None


def _share(row: dict, peak: float, batch: int, key: str) -> float | None:
    ms = row.get(key)
    return row["gflops"] * batch / (ms / 1e3) / peak if ms and peak else None


def _fmt(x, spec="{:.2f}"):
    return "" if x is None else spec.format(x)


def latency_table(run: dict, models: list[str]) -> str:
    lines = ["| model | pattern | batch | ours (ms) | ONNX Runtime (ms) | OpenVINO (ms) | ours / faster peer | "
             "ours % matmul peak | ours chose |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for pattern in PATTERNS:
        rows, peak = _by(run, pattern), run[pattern]["peak"]
        for m in models:
            ours = rows.get((m, "torch"), {})
            for batch, key in ((1, "b1"), (BATCH, "bN")):
                cells = [m, pattern, str(batch), _fmt(ours.get(key))]
                cells += [_fmt(rows.get((m, e), {}).get(key)) for e in PEERS]
                cells += [_fmt(_ratio(rows, m, key)), _fmt(_share(ours, peak, batch, key), "{:.0%}"),
                          ours.get("note", "")]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread_table(runs: list[dict], models: list[str]) -> tuple[str, list[float]]:
    lines = ["| model | pattern | batch | ours / faster peer, each run | range | ours % peak, each run |",
             "|---|---|---:|---|---:|---|"]
    worst = []
    for pattern in PATTERNS:
        for m in models:
            for batch, key in ((1, "b1"), (BATCH, "bN")):
                ratios = [_ratio(_by(r, pattern), m, key) for r in runs]
                shares = [_share(_by(r, pattern).get((m, "torch"), {}), r[pattern]["peak"], batch, key)
                          for r in runs]
                got = [x for x in ratios if x is not None]
                worst += got
                span = f"{min(got):.2f}-{max(got):.2f}" if got else ""
                lines.append(f"| {m} | {pattern} | {batch} | {', '.join(_fmt(x) for x in ratios)} | {span} | "
                             f"{', '.join(_fmt(s, '{:.0%}') for s in shares)} |")
    return "\n".join(lines) + "\n", worst


def int8_table(runs: list[dict], models: list[str]) -> tuple[str, dict]:
    lines = ["| model | batch | int8 (ms) | best exact fp32 (ms) | int8 / best fp32, each run | median | int8 |",
             "|---|---:|---:|---:|---|---:|---|"]
    medians = {}

    def best_fp32(rows, m, key):  # ours or a peer, whichever was faster in this run
        got = [rows.get((m, e), {}).get(key) for e in ("torch", *PEERS)]
        return min((g for g in got if g), default=None)

    for m in models:
        for batch, key in ((1, "b1"), (BATCH, "bN")):
            ratios, first = [], _by(runs[0], "loop")
            for r in runs:
                rows = _by(r, "loop")
                a, b = rows.get((m, "int8"), {}).get(key), best_fp32(rows, m, key)
                ratios.append(a / b if a and b else None)
            got = [x for x in ratios if x is not None]
            medians[(m, batch)] = statistics.median(got) if got else None
            lines.append(f"| {m} | {batch} | {_fmt(first.get((m, 'int8'), {}).get(key))} | "
                         f"{_fmt(best_fp32(first, m, key))} | {', '.join(_fmt(x) for x in ratios)} | "
                         f"{_fmt(medians[(m, batch)])} | {first.get((m, 'int8'), {}).get('note', '')} |")
    return "\n".join(lines) + "\n", medians


def train(label: str, args: list[str], workdir: Path, quick: bool) -> str:
    """A `cspnet train` run (its own process); the path of its best checkpoint."""
    out = workdir / label.split(" ")[0].lower().replace("-", "_")
    cmd = [sys.executable, "-m", "cspnet", "train", *args, "--out", str(out)]
    if quick:  # one epoch: the code path, not the figure
        if "--epochs" in cmd:
            i = cmd.index("--epochs")
            del cmd[i:i + 2]
        cmd += ["--epochs", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"training {label} failed: {last}")
    return str(out / "best.safetensors")


def accuracy_table(quick: bool) -> str:
    lines = ["| model, data | backend | val images | top-1 fp32 | top-1 int8 | change (points) | same top-1 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="cspnet-int8-acc-") as tmp:
        for label, args in ACCURACY_RUNS:
            if str(FASHION) in args and not FASHION.is_dir():
                lines.append(f"| {label} | skipped: {FASHION} not found | | | | | |")
                continue
            ckpt = train(label, args, Path(tmp), quick)
            for r in run_child([sys.executable, __file__, "--child-accuracy", ckpt]):
                if "skipped" in r:
                    lines.append(f"| {label} | {r['backend']}: skipped ({r['skipped']}) | | | | | |")
                    continue
                lines.append(f"| {label} | {r['backend']} | {r['images']} | {100 * r['fp32']:.2f}% | "
                             f"{100 * r['int8']:.2f}% | {100 * (r['int8'] - r['fp32']):+.2f} | "
                             f"{100 * r['agreement']:.1f}% |")
    return "\n".join(lines) + "\n"


def verdicts(runs: list[dict], models: list[str], worst: list[float], int8_medians: dict) -> str:
    """The targets, each judged from the figures above."""
    large = [m for m in models if m in LARGE]
    shares = [_share(_by(r, p).get((m, "torch"), {}), r[p]["peak"], b, k) for r in runs for p in PATTERNS
              for m in large for b, k in ((1, "b1"), (BATCH, "bN"))]
    shares = [s for s in shares if s is not None]
    int8 = [v for (m, _), v in int8_medians.items() if m in large and v is not None]
    return "\n".join([
        f"- ours <= 1.00x the faster peer in every cell of every run: "
        f"{'yes' if worst and max(worst) <= 1.0 else 'no'} (worst {max(worst):.2f})" if worst else "- no ratios",
        f"- ours >= 95% of the matmul peak on the large models, every cell and run: "
        f"{'yes' if shares and min(shares) >= 0.95 else 'no'} (lowest {min(shares):.0%})" if shares else
        "- no large models timed",
        f"- int8 <= 0.55x the best exact fp32 path on the large models (median over runs): "
        f"{'yes' if int8 and max(int8) <= 0.55 else 'no'} (worst {max(int8):.2f})" if int8 else "- no int8 figures",
    ]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models at 64 px, 3 rounds, one run, print only")
    p.add_argument("--runs", type=int, default=3, help="separate timing runs, for the run-to-run spread")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the int8 accuracy section")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("inference.md"))
    p.add_argument("--child-timing", nargs="+", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--child-pairs", nargs=2, metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--child-accuracy", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--img-size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_timing:
        return print_child_result(timing_run(args.child_timing, args.img_size, args.rounds))
    if args.child_pairs:
        return print_child_result(pairs_run(tuple(args.child_pairs), args.img_size, args.rounds))
    if args.child_accuracy:
        return print_child_result(accuracy_run(args.child_accuracy))

    quick = args.quick
    models = args.models or (QUICK_MODELS if quick else MODELS)
    rounds, runs_n = (3, 1) if quick else (args.rounds, args.runs)
    size = ["--img-size", "64"] if quick else []
    before = machine_info()
    base = [sys.executable, __file__, "--rounds", str(rounds), *size]
    runs = []
    for i in range(runs_n):
        print(f"timing run {i + 1} of {runs_n}", file=sys.stderr, flush=True)
        runs.append(run_child([*base, "--child-timing", *models]))
    print("pairs", file=sys.stderr, flush=True)
    pairs = run_child([*base, "--child-pairs", *(QUICK_PAIR if quick else PAIR)])
    print("int8 accuracy", file=sys.stderr, flush=True)
    accuracy = accuracy_table(quick) if args.accuracy else "skipped (--no-accuracy)\n"
    after = machine_info()
    spread, worst = spread_table(runs, models)
    int8, int8_medians = int8_table(runs, models)
    text = "\n".join([
        "# Inference on this CPU: our default path, ONNX Runtime, OpenVINO, int8",
        "",
        f"Written by `python benchmarks/inference.py{' --quick' if quick else ''}` on {datetime.date.today()}"
        f" ({runs_n} timing run(s), {rounds} interleaved rounds each).",
        f"Before: {before}.  ",
        f"After: {after}.",
        "",
        "`ours` is `cspnet.optimize_for_inference` (what `cspnet predict` and `cspnet bench --engine torch` run): "
        "the winner among BN-folded eager, channels-last, torch.compile with freezing, the oneDNN Graph trace, "
        "and the exported ONNX graph in ONNX Runtime and in OpenVINO, chosen for the timed call pattern by the "
        "rule of `cspnet.inference.timing.choose` (the fastest median wins only if quicker than each simpler "
        "candidate in >= 75% of the rounds). The peers run the same ONNX file with the settings of "
        "`cspnet.inference.runtimes` (ONNX Runtime: torch's thread count, spinning on; OpenVINO: latency hint, "
        "f32). `loop`: each call right after an untimed one of its own; `sporadic`: each call after 20 ms idle. "
        f"Batch {BATCH} figures are per batch.",
        "",
        "## Latency, first run",
        "",
        latency_table(runs[0], models),
        f"## Run-to-run spread ({runs_n} runs, each a fresh process)",
        "",
        spread,
        "## int8 against the best exact fp32 path (ours or a peer, whichever was faster), loop pattern",
        "",
        "int8: ONNX Runtime's static quantization run in OpenVINO (`cspnet.inference.int8`), calibrated here on "
        "random images: its time, not its outputs; its accuracy cost is the next table.",
        "",
        int8,
        "## int8 accuracy cost on real data",
        "",
        "Each model trained by `cspnet train` here; int8 calibrated on 300 images of the train split, top-1 on "
        "the whole validation split.",
        "",
        accuracy,
        f"## Time follows FLOPs: {' -> '.join(QUICK_PAIR if quick else PAIR)} on the new default path",
        "",
        pairs,
        "## Targets",
        "",
        verdicts(runs, models, worst, int8_medians),
    ])
    print(text)
    if not quick:
        atomic_write_bytes(args.output, text.encode())
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
