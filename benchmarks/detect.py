"""The paper's Table 5 on this CPU: the real-time detectors at batch 1 in our default path
(cspnet.optimize_for_inference), in OpenCV DNN (the paper's engine: its darknet importer reading the
cfg where one exists, else the ONNX export) and in ONNX Runtime, interleaved in one run; and the
paper's Maxout memory claim for the EFM.

    python benchmarks/detect.py            # writes benchmarks/detect.md (run on a quiet machine)
    python benchmarks/detect.py --quick    # smoke run: tiny detectors, few rounds, printed only
    python benchmarks/detect.py --where    # benchmarks/detect_where.md: where our time goes (oneDNN's log)

OpenCV 5 dropped the darknet importer, so the script runs itself under OpenCV 4.x: where the cv2 it
finds has no ``readNetFromDarknet`` it makes a virtual environment that sees this one's packages plus
``opencv-python-headless<5`` (``--venv``, default runs/venv-opencv4) and re-runs there.

Each run is a fresh process (clean heap, threads, caches); all engines of all models are timed
round by round in a shuffled order, in two call patterns: ``loop`` (each call right after an untimed
one of its own, as a loop over images runs) and ``sporadic`` (50 ms idle before each call, as a
camera or a request stream calls, which lets thread pools sleep and caches cool). Three runs; the
tables give the median over runs and the range of the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CFGS = ROOT.parent / "shared" / "reference" / "darknet-cfg"
ROWS = [  # model, input size, its darknet cfg (None: no cfg was released)
    ("yolov3_tiny", 416, "prn/yolov3-tiny.cfg"),
    ("yolov3_tiny_prn", 416, "prn/yolov3-tiny-prn.cfg"),
    ("cspdensenet_b_ref_prn", 320, None),
    ("csppeleenet_ref_prn3l", 320, None),
    ("csppeleenet_ref_efm_sam", 320, None),
    ("cspresnext50_panet_spp", 512, "csresnext50-panet-spp.cfg"),
]
QUICK_ROWS = [("cspdarknet_tiny_prn", 128, None), ("yolov3_tiny_prn", 128, "prn/yolov3-tiny-prn.cfg")]
PATTERNS = {"loop": dict(pause=0.01, primed=True), "sporadic": dict(pause=0.05, primed=False)}
ENGINES = ("ours", "opencv", "onnxruntime")
DARKNET_TOL = 1e-2  # OpenCV vs ours: box centres, log sizes, objectness (its exp/sigmoid approximate to ~1e-3)
TARGET_VS_OPENCV, TARGET_VS_ORT = 1.5, 1.0
TOL = 1e-2  # exactness of our candidates, relative to the output scale. The random 138-layer PANet-SPP is
# ill-conditioned: its fp32 outputs differ from its own float64 ones by 1e-3 relative (0.010 on outputs of
# about 15 at 256 px), so BatchNorm folding (exact in float64: 3e-11) moves them by 1e-4 to 1.5e-3 in fp32,
# over optimize_for_inference's default tolerance of 1e-4


# --- the OpenCV 4 environment -------------------------------------------------------------------


def ensure_opencv4(venv: Path) -> None:
    """Re-run this script under a cv2 that still reads darknet cfgs (OpenCV 4.x)."""
    import cv2

    if hasattr(cv2.dnn, "readNetFromDarknet"):
        return
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"OpenCV {cv2.__version__} has no darknet importer; making {venv} with opencv-python-headless<5",
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "opencv-python-headless<5"], check=True)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


# --- one run (a child process) ------------------------------------------------------------------


def darknet_engine(cfg: Path, size: int, workdir: Path):
    """OpenCV's darknet importer on ``cfg`` with random weights, and whether its decoded boxes equal
    ours for the same weights (a mismatch means OpenCV does not compute this cfg as darknet does)."""
    import cv2
    import numpy as np
    import torch

    from cspnet.bench.engines import opencv_callable
    from cspnet.darknet import build, randomize, save_weights
    from cspnet.detection.yolo_decode import decode

    net = randomize(build(cfg, size), seed=0).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the prediction convs scaled to unit-size outputs, so no sigmoid or exp saturates
        for i, raw in zip(net.outputs_needed(), net(x), strict=True):
            conv = net.layers[i].conv
            conv.weight /= raw.std()
            conv.bias /= raw.std()
    weights = workdir / (cfg.stem + ".weights")
    save_weights(net, weights)
    cv_net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    cv_net.setInput(x.numpy())
    # OpenCV's [yolo] output: per anchor cell (cx, cy, w, h) relative to the input, objectness, classes;
    # the boxes' centres and objectness are compared as they are, their sizes as logs
    with torch.no_grad():
        ours = [decode([r], [h], size)[0] for r, h in zip(net(x), net.heads, strict=True)]
    theirs = cv_net.forward(cv_net.getUnconnectedOutLayersNames())
    worst = 0.0
    for mine, other, head in zip(ours, theirs, net.heads, strict=True):
        xy = (mine[:, :2] + mine[:, 2:4]) / 2 / size
        wh = (mine[:, 2:4] - mine[:, :2]) / size
        cells = _cell_order(torch.cat([xy, wh.log(), mine[:, 4:5]], 1).numpy(), head.num_anchors)
        other = np.asarray(other, dtype=np.float64)[:, :5]
        other[:, 2:4] = np.log(other[:, 2:4])  # sizes compared as logs: exp(tw) overflows on random weights
        diff = np.abs(cells - other)
        worst = max(worst, float(diff[np.isfinite(diff)].max()))
    return opencv_callable(cv_net, x), worst


def _cell_order(rows, anchors: int):
    """decode()'s rows are anchor-major (anchor, row, col); OpenCV's are cell-major (row, col, anchor)."""
    n = rows.shape[0]
    return rows.reshape(anchors, n // anchors, -1).transpose(1, 0, 2).reshape(n, -1)


def _random_model(name: str, size: int):
    """Random weights with BatchNorm statistics of real activations, as a trained model has (with BN's
    initial statistics the activations grow layer by layer)."""
    import torch

    import cspnet
    from cspnet.layers import calibrate_batchnorms

    return calibrate_batchnorms(cspnet.create_model(name), torch.rand(4, 3, size, size))


def one_run(rows, rounds: int, warmup: int) -> dict:
    import tempfile

    import torch

    import cspnet
    from cspnet.bench.engines import engine_callable
    from cspnet.bench.profile import profile
    from cspnet.inference import optimize_for_inference
    from cspnet.inference.compare import max_difference
    from cspnet.inference.export import prepare_for_export, to_onnx_bytes
    from cspnet.inference.timing import Timing, interleaved

    threads = torch.get_num_threads()
    out = {"models": {}, "patterns": {}}
    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, size, cfg in rows:
            torch.manual_seed(0)
            model, x = _random_model(name, size), torch.rand(1, 3, size, size)
            with torch.no_grad():
                reference = model(x)
            info = {"size": size}
            with torch.device("meta"):
                p = profile(cspnet.create_model(name), size)
            info.update(params_m=p.params / 1e6, weights_m=p.weights / 1e6, gflops=p.gflops)
            fast = optimize_for_inference(model, x, tol=TOL)
            info["chose"] = fast.report.chosen
            calls[f"{name}|ours"] = lambda f=fast, x=x: f(x)
            onnx = work / f"{name}.onnx"  # one static batch-1 graph for both engines (OpenCV 4 refuses the
            onnx.write_bytes(to_onnx_bytes(prepare_for_export(model), x))  # EFM's dynamic-batch Resize)
            ort, _, _ = engine_callable("onnxruntime", model, x, onnx, threads)
            info["ort_diff"] = max_difference(torch.as_tensor(ort()), reference[0])
            calls[f"{name}|onnxruntime"] = ort
            opencv, opencv_from = None, "ONNX (no cfg released)"
            if cfg is not None:
                try:
                    opencv, diff = darknet_engine(CFGS / cfg, size, work)
                    info["opencv_darknet_diff"] = diff
                    opencv_from = f"darknet cfg ({cfg})"
                    if not diff <= DARKNET_TOL:
                        opencv, opencv_from = None, (f"ONNX: its darknet importer reads {cfg} but computes it "
                                                     f"differently (decoded outputs off by {diff:.3g})")
                except Exception as e:  # cv2.error: the importer refuses the cfg
                    opencv_from = f"ONNX: its darknet importer refuses {cfg} ({str(e).strip().splitlines()[-1][:80]})"
            if opencv is None:
                opencv, _, _ = engine_callable("opencv", model, x, onnx, threads)
            info["opencv_from"] = opencv_from
            calls[f"{name}|opencv"] = opencv
            out["models"][name] = info
        for pattern, kw in PATTERNS.items():
            primed = set(calls) if kw["primed"] else set()
            with torch.no_grad():
                times = interleaved(calls, rounds, warmup, pause=kw["pause"], primed=primed)
            out["patterns"][pattern] = {k: Timing.of(v).median * 1e3 for k, v in times.items()}
    return out


# --- the report ---------------------------------------------------------------------------------


def _range(values) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(runs: list[dict], rows, rounds: int, machine: str, flags: str, memory: str, quick: bool) -> str:
    first = runs[0]["models"]
    lines = [
        "# Detectors on this CPU: the paper's Table 5 (CPU column)",
        "",
        f"Written by `python benchmarks/detect.py{' --quick' if quick else ''}` on {datetime.date.today()}: {machine}.",
        f"CPU flags: `{flags}`.",
        "",
        "Batch 1, fp32, random weights (latency does not depend on their values), BatchNorm statistics calibrated "
        "on random images (as a trained model's are). "
        f"{len(runs)} runs, each a fresh process; "
        f"in each, every model x engine is timed over {rounds} interleaved, shuffled rounds in two call patterns: "
        "**loop** (each call right after an untimed one of its own) and **sporadic** (50 ms idle before each call). "
        "Cells: median over runs of each run's median; ratios: their range over runs. "
        "**ours** = `cspnet.optimize_for_inference(model, x, tol=1e-2)` (the form it chose is named; the random "
        "PANet-SPP's own fp32 rounding is 1e-3 relative, so the default 1e-4 rejects even BatchNorm folding on "
        "it); **OpenCV** = OpenCV DNN, the "
        "paper's engine (its darknet importer on the cfg where one exists and computes it as darknet does, else "
        "the ONNX export); **ORT** = ONNX Runtime on the same ONNX export (no thread spinning); the ONNX graph is "
        "exported at batch 1 (OpenCV 4.x cannot read the EFM's dynamic-batch resize). "
        f"Targets: ours >= {TARGET_VS_OPENCV}x OpenCV's fps and not slower than ORT.",
        "",
        "| model | size | params (M) | GFLOPs | ours chose | OpenCV reads | paper CPU fps (i9-9900K) |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    paper = {"yolov3_tiny": "54", "yolov3_tiny_prn": "71", "cspdensenet_b_ref_prn": "102",
             "csppeleenet_ref_prn3l": "52", "csppeleenet_ref_efm_sam": "?", "cspresnext50_panet_spp": "-"}
    for name, size, _ in rows:
        m = first[name]
        chose = sorted({r["models"][name]["chose"] for r in runs})
        lines.append(f"| {name} | {size} | {m['params_m']:.2f} | {m['gflops']:.2f} | {', '.join(chose)} | "
                     f"{m['opencv_from']} | {paper.get(name, '')} |")
    for pattern in PATTERNS:
        lines += ["", f"**{pattern}**", "",
                  "| model | ours ms | ours fps | OpenCV ms | OpenCV fps | ORT ms | ours/OpenCV fps | ORT/ours latency "
                  "| targets met |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, _, _ in rows:
            ms = {e: [r["patterns"][pattern][f"{name}|{e}"] for r in runs] for e in ENGINES}
            med = {e: statistics.median(v) for e, v in ms.items()}
            vs_cv = [c / o for o, c in zip(ms["ours"], ms["opencv"], strict=True)]
            vs_ort = [t / o for o, t in zip(ms["ours"], ms["onnxruntime"], strict=True)]
            ok = min(vs_cv) >= TARGET_VS_OPENCV and min(vs_ort) >= TARGET_VS_ORT
            lines.append(f"| {name} | {med['ours']:.1f} | {1e3 / med['ours']:.1f} | {med['opencv']:.1f} | "
                         f"{1e3 / med['opencv']:.1f} | {med['onnxruntime']:.1f} | {_range(vs_cv)} | {_range(vs_ort)} "
                         f"| {'yes' if ok else '**no**'} |")
    lines += ["", memory]
    return "\n".join(lines) + "\n"


def maxout_memory(quick: bool) -> str:
    from cspnet.detection.memory import maxout_saving

    name, size = ("csppeleenet_tiny_efm", 128) if quick else ("csppeleenet_efm", 320)
    s = maxout_saving(name, size)
    rows = ["## Maxout in the EFM: activation memory of the feature pyramid", "",
            f"`{name}` at {size}, batch 1, inference (`cspnet.detection.memory.maxout_saving`): the bytes of every "
            "tensor the neck creates, counted once per storage while it is alive (inputs, weights and operator "
            "scratch space excluded); with Maxout (groups of 2, the EFM's setting) and without (`maxout=1`). "
            "The paper claims -75% memory when generating the feature pyramid.", "",
            "| part | measure | with Maxout (MB) | without (MB) | change |", "|---|---|---:|---:|---:|"]
    for part in ("pyramid", "neck"):
        for measure in ("peak_bytes", "total_bytes"):
            a, b = (getattr(m, measure) / 2**20 for m in getattr(s, part))
            rows.append(f"| {part} | {measure.split('_')[0]} | {a:.2f} | {b:.2f} | {s.ratio(part, measure) - 1:+.0%} |")
    return "\n".join(rows)


def where_the_time_goes(rows, output: Path) -> None:
    """oneDNN's own time by primitive kind in each model's oneDNN Graph form at batch 1, against the wall
    time (benchmarks/pairs.py's profile, ONEDNN_VERBOSE in a child): what runs outside oneDNN's kernels."""
    from pairs import primitive_table

    from cspnet.bench.child import machine_info
    from cspnet.checkpoint import atomic_write_bytes

    tables = [primitive_table([(name,)], size, (1,), 10).splitlines() for name, size, _ in rows]
    body = tables[0][:2] + [line for t in tables for line in t[2:]]
    text = "\n".join([
        "# Where the detectors' time goes in our oneDNN Graph form (batch 1)", "",
        f"Written by `python benchmarks/detect.py --where` on {datetime.date.today()}: {machine_info()}.", "",
        "Per forward, averaged over 10 runs in a fresh process with ONEDNN_VERBOSE=1 (so the wall time includes "
        "the logging); oneDNN (ms) is the sum of oneDNN's own primitive times, by kind; outside oneDNN = wall - "
        "oneDNN: the TorchScript interpreter, ops oneDNN Graph did not take (upsampling, slices, Maxout's max), "
        "and the framework between partitions. Random weights, each model at its Table 5 size.", "",
        *body, ""])
    atomic_write_bytes(output, text.encode())
    print(f"wrote {output}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny detectors, 3 rounds, one run, printed only")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--venv", type=Path, default=ROOT / "runs" / "venv-opencv4")
    p.add_argument("--output", type=Path, default=HERE / "detect.md")
    p.add_argument("--where", action="store_true", help="write detect_where.md: oneDNN's time by primitive kind")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    rows = QUICK_ROWS if args.quick else ROWS
    rounds, runs = (3, 1) if args.quick else (args.rounds, args.runs)
    if args.child:
        from cspnet.bench.child import print_child_result

        print_child_result(one_run(rows, rounds, 1 if args.quick else args.warmup))
        return
    if args.where:
        where_the_time_goes(rows, HERE / "detect_where.md")
        return
    ensure_opencv4(args.venv)
    from cspnet.bench.child import machine_info, run_child

    machine = machine_info()
    flags = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), "unknown")
    cmd = [sys.executable, __file__, "--child", "--rounds", str(rounds), "--warmup", str(args.warmup)]
    results = []
    for i in range(runs):
        print(f"run {i + 1}/{runs}", flush=True)
        results.append(run_child(cmd + (["--quick"] if args.quick else [])))
    text = report(results, rows, rounds, machine, flags, maxout_memory(args.quick), args.quick)
    if args.quick:
        print(text)
    else:
        from cspnet.checkpoint import atomic_write_bytes

        atomic_write_bytes(args.output, text.encode())
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
