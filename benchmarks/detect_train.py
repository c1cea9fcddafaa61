"""Detection training on this CPU; writes benchmarks/detect_train.md and benchmarks/table2.md.

- demo: ``cspnet train --task detect`` exactly as a user types it (the tiny CSP detector on the
  built-in digits-on-photographs set): its mAP and wall time.
- trees: the real tree-crown tiles of ../shared/data/detect/deepforest_trees (45 train / 10 val): a
  small CSP detector and the same detector with ``fusion=none`` in every stage (the baseline), the
  same recipe, budget and seeds.
- table2: the paper's Table 2 ablation on CSPPeleeNet-family tiny detectors (EFM, EFM + SAM,
  EFM + SPP, GFM, PRN; MSE vs GIoU box loss on the EFM), on the built-in set: params, GFLOPs, CPU
  fps at batch 1, mAP, each with the same recipe, budget and seed.
- throughput: training steps of the paper-size cspresnext50_panet_spp at 416 px, fp32 and bf16
  autocast, timed interleaved.

Every training run is ``python -m cspnet train --task detect ...`` in its own process, its run
directory under runs/bench-detect/ (a finished run is reused, so an interrupted benchmark resumes).

    python benchmarks/detect_train.py                # everything (about 70 minutes on 2 cores)
    python benchmarks/detect_train.py --part table2  # one part; the .md files keep the other parts' text
    python benchmarks/detect_train.py --quick        # smoke run, tiny budgets, printed only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TREES = ROOT.parent / "shared" / "data" / "detect" / "deepforest_trees"
RUNS = ROOT / "runs" / "bench-detect"
PARTS = ("demo", "trees", "table2", "throughput")

TREES_MODEL, TREES_SIZE, TREES_EPOCHS, TREES_SEEDS = "cspdarknet_tiny_fpn", 320, 80, (0, 1)
TREES_RECIPE = ["--batch-size", "8", "--mosaic"]
TABLE2_SIZE, TABLE2_EPOCHS = 128, 8
TABLE2_ROWS = [  # label, model, --set overrides, --box-loss
    ("EFM", "csppeleenet_tiny_efm", [], "mse"),
    ("EFM + SAM", "csppeleenet_tiny_efm", ["attention=sam"], "mse"),
    ("EFM + SPP", "csppeleenet_tiny_efm", ["spp=true"], "mse"),
    ("GFM", "csppeleenet_tiny_gfm", [], "mse"),
    ("PRN", "csppeleenet_tiny_prn", [], "mse"),
    ("EFM, GIoU loss", "csppeleenet_tiny_efm", [], "giou"),
]
THROUGHPUT_MODEL, THROUGHPUT_SIZE, THROUGHPUT_BATCH = "cspresnext50_panet_spp", 416, 4


def _env() -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train(name: str, argv: list[str]) -> dict:
    """``cspnet train --task detect argv`` into runs/bench-detect/name (reused when finished)."""
    out = RUNS / name
    metrics = out / "metrics.json"
    if not metrics.is_file():
        resume = ["--resume"] if (out / "last.state.pt").is_file() else []
        cmd = [sys.executable, "-m", "cspnet", "train", "--task", "detect", *argv, "--out", str(out), "--quiet",
               *resume]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1]}")
        (out / "bench.json").write_text(json.dumps({"process_s": time.perf_counter() - start,
                                                    "stdout": proc.stdout, "stderr": proc.stderr}))
    result = json.loads(metrics.read_text())
    result["process_s"] = json.loads((out / "bench.json").read_text())["process_s"]
    return result


def _sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def cost(model: str, sets: list[str], size: int, num_classes: int) -> tuple[float, float]:
    """(M params, GFLOPs at ``size``) of the detector as trained."""
    from cspnet import create_model
    from cspnet.bench.profile import profile

    p = profile(create_model(model, num_classes=num_classes, **_sets(sets)), size)
    return p.params / 1e6, p.gflops


def fps(models: dict[str, torch.nn.Module], size: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Batch-1 frames per second (median, and the range over rounds) of BatchNorm-folded eager
    models, timed interleaved."""
    from cspnet.inference.timing import interleaved

    x = torch.rand(1, 3, size, size)
    calls = {}
    for name, model in models.items():
        model = model.eval().fuse()
        calls[name] = lambda m=model: m(x)
    with torch.no_grad():
        times = interleaved(calls, rounds, warmup=3, seed=1)
    return {k: (1 / statistics.median(v), 1 / max(v), 1 / min(v)) for k, v in times.items()}


# --- parts --------------------------------------------------------------------------------------


def demo(quick: bool) -> list[str]:
    argv = ["--epochs", "1"] if quick else []
    m = train("demo-quick" if quick else "demo", argv)
    return ["## The demo: `cspnet train --task detect`", "",
            f"The default tiny CSP detector (`{m['model']}`) on `builtin` detection data (scikit-learn's "
            "digits pasted on its sample photographs; 1,000 train / 200 val images at 128 px), the task's default "
            "recipe, nothing else on the command line: its backbone first trained on the built-in digits "
            "classification set (`--backbone-checkpoint builtin`, the default with builtin data; part of the whole "
            "command's time), every anchor fitting a box with a shape IoU over 0.213 trained on it "
            "(`--iou-thresh`).", "",
            "| epochs | mAP@0.5 | mAP@0.5:0.95 | wall time (training + evaluation) | whole command |",
            "|---:|---:|---:|---:|---:|",
            f"| {m['epoch']} | {m['map50']:.3f} | {m['map']:.3f} | {m['wall_s'] / 60:.1f} min | "
            f"{m['process_s'] / 60:.1f} min |", "",
            f"Target: mAP@0.5 >= 0.8 in under 10 minutes on 2 CPU cores: "
            f"{'met' if m['map50'] >= 0.8 and m['process_s'] < 600 else 'NOT met'}.", ""]


def trees(quick: bool) -> list[str]:
    if not TREES.is_dir():
        return ["## Tree crowns", "", f"skipped: {TREES} not found", ""]
    epochs, seeds = (2, (0,)) if quick else (TREES_EPOCHS, TREES_SEEDS)
    rows = []
    for label, sets in (("CSP", []), ("baseline (fusion=none)", ["fusion=none"])):
        runs = []
        for seed in seeds:
            argv = ["--model", TREES_MODEL, "--data", str(TREES), "--img-size", str(TREES_SIZE), "--epochs",
                    str(epochs), "--seed", str(seed), *TREES_RECIPE, *(a for s in sets for a in ("--set", s))]
            runs.append(train(f"trees-{'csp' if not sets else 'base'}-s{seed}{'-quick' if quick else ''}", argv))
        params, gflops = cost(TREES_MODEL, sets, TREES_SIZE, 1)
        rows.append((label, params, gflops, runs))
    lines = ["## Tree crowns: CSP against its baseline", "",
             f"`{TREES_MODEL}` at {TREES_SIZE} px on deepforest_trees (45 train / 10 val tiles of 400 px, one class), "
             f"{epochs} epochs, `{' '.join(TREES_RECIPE)}`, the task's defaults otherwise, seeds "
             f"{', '.join(map(str, seeds))}; mean (min-max) over seeds.", "",
             "| model | params (M) | GFLOPs | mAP@0.5 | mAP@0.5:0.95 | wall time per run |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, params, gflops, runs in rows:
        lines.append(f"| {label} | {params:.3f} | {gflops:.3f} | {_span(runs, 'map50')} | {_span(runs, 'map')} | "
                     f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f} min |")
    (csp, p0, g0, r0), (_, p1, g1, r1) = rows
    d50 = statistics.mean(r["map50"] for r in r0) - statistics.mean(r["map50"] for r in r1)
    lines += ["", f"CSP against the baseline: params {100 * (p0 / p1 - 1):+.1f}%, GFLOPs {100 * (g0 / g1 - 1):+.1f}%, "
              f"mAP@0.5 {100 * d50:+.1f} points.", ""]
    return lines


def _span(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs]
    return f"{statistics.mean(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"


def table2(quick: bool) -> list[str]:
    from cspnet import create_model

    epochs = 1 if quick else TABLE2_EPOCHS
    results, models = [], {}
    for label, model, sets, loss in TABLE2_ROWS:
        argv = ["--model", model, "--img-size", str(TABLE2_SIZE), "--epochs", str(epochs), "--box-loss", loss,
                *(a for s in sets for a in ("--set", s))]
        slug = label.lower().replace(" + ", "-").replace(", ", "-").replace(" ", "-")
        m = train(f"table2-{slug}{'-quick' if quick else ''}", argv)
        params, gflops = cost(model, sets, TABLE2_SIZE, 10)
        results.append((label, model, sets, loss, params, gflops, m))
        if loss == "mse":
            models[label] = create_model(model, num_classes=10, **_sets(sets))
    speed = fps(models, TABLE2_SIZE, 5 if quick else 40)
    lines = ["## The paper's Table 2 on CSPPeleeNet tiny detectors", "",
             f"On `builtin` (the built-in digits set: 10 classes, 1,000 train / 200 val images, 128 px), chosen over "
             f"the tree tiles because its ten classes exercise the class term and its 1,000 images give a mAP that "
             f"separates designs within a CPU budget. Each row: `cspnet train --task detect --img-size "
             f"{TABLE2_SIZE} --epochs {epochs}`, the task's default recipe (so the backbone starts from its "
             f"built-in digits pretraining, as the paper's start from ImageNet), seed 0. CPU fps: batch 1 at "
             f"{TABLE2_SIZE} px, BatchNorm folded, eager PyTorch, median (range) over interleaved rounds.", "",
             "| head | box loss | params (M) | GFLOPs | CPU fps | mAP@0.5 | mAP@0.5:0.95 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, model, sets, loss, params, gflops, m in results:
        key = label if label in speed else "EFM"
        med, lo, hi = speed[key]
        lines.append(f"| {label.split(',')[0]} (`{model}`{' ' + ' '.join(sets) if sets else ''}) | {loss} | "
                     f"{params:.3f} | {gflops:.3f} | {med:.0f} ({lo:.0f}-{hi:.0f}) | {m['map50']:.3f} | "
                     f"{m['map']:.3f} |")
    lines.append("")
    return lines


def throughput(quick: bool) -> list[str]:
    from cspnet import create_model
    from cspnet.data import collate_detection
    from cspnet.detection.task import DetectionTask
    from cspnet.engine import TrainConfig, Trainer
    from cspnet.inference.timing import Timing, interleaved

    size = 128 if quick else THROUGHPUT_SIZE
    batch = THROUGHPUT_BATCH
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.7
        wh = torch.rand(6, 2, generator=g) * size * 0.3 + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(80, (6,), generator=g)})
    gt = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": str(k)} for k in range(80)]}
    steps = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        model = create_model(THROUGHPUT_MODEL, num_classes=80)
        task = DetectionTask(model.heads, size, gt, list(range(1, 81)))
        cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=1e-4, warmup_epochs=0, amp=amp,
                          progress=False)
        trainer = Trainer(model, task, [None] * batch, [], collate_detection, cfg, log=lambda _: None)
        steps[amp] = lambda t=trainer: t.train_step(x, targets)
    times = interleaved(steps, 2 if quick else 6, warmup=1, progress="train steps")
    lines = ["## Training throughput of a paper-size detector", "",
             f"`{THROUGHPUT_MODEL}` (80 classes) at {size} px, batch {batch}, one engine training step (forward, "
             "YOLO loss, backward, SGD step), fp32 and bf16 autocast timed interleaved; median (min) step time.", "",
             "| precision | step time (s) | images/s | bf16 / fp32 |", "|---|---:|---:|---:|"]
    base = Timing.of(times["none"]).median
    for amp, label in (("none", "fp32"), ("bf16", "bf16 autocast")):
        t = Timing.of(times[amp])
        lines.append(f"| {label} | {t.median:.2f} ({t.min:.2f}) | {batch / t.median:.2f} | {base / t.median:.2f}x |")
    lines += ["", "No GPU machine was lent to this session, so there is no GPU figure.", ""]
    return lines


# --- report -------------------------------------------------------------------------------------


def header(title: str, argv: str) -> list[str]:
    from cspnet.bench.child import cpu_flags, machine_info

    return [f"# {title}", "", f"Last written by `python benchmarks/detect_train.py{argv}` on "
            f"{time.strftime('%Y-%m-%d %H:%M')} (each section names its own run).", f"Machine: {machine_info()}.",
            f"CPU flags: `{cpu_flags()}`.", ""]


def _merge(path: Path, title: str, argv: str, sections: dict[str, list[str]]) -> None:
    """Rewrite ``path`` with fresh ``sections`` (by their heading), keeping the other sections it had."""
    old: dict[str, list[str]] = {}
    if path.is_file():
        current = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                current = line
                old[current] = []
            if current:
                old[current].append(line)
    for lines in sections.values():
        old[lines[0]] = lines
    body = [line for lines in old.values() for line in lines]
    path.write_text("\n".join(header(title, argv) + body).rstrip() + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=PARTS, action="append", help="default: all")
    p.add_argument("--quick", action="store_true", help="tiny budgets, printed only")
    args = p.parse_args(argv)
    parts = args.part or list(PARTS)
    RUNS.mkdir(parents=True, exist_ok=True)
    done = {}
    for part in parts:
        lines = globals()[part](args.quick)
        when = time.strftime("%Y-%m-%d %H:%M")
        stamp = (f"Section written by `python benchmarks/detect_train.py --part {part}` on {when} (a training run "
                 "already finished under runs/bench-detect/ is reused, not re-run).")
        done[part] = [lines[0], "", stamp, *lines[1:]]  # each section says when it was measured
    if args.quick:
        print("\n".join(line for lines in done.values() for line in lines))
        return 0
    flag = "".join(f" --part {p}" for p in args.part or ())
    train_parts = {k: v for k, v in done.items() if k != "table2"}
    if train_parts:
        _merge(HERE / "detect_train.md", "Detection training (CPU)", flag, train_parts)
    if "table2" in done:
        _merge(HERE / "table2.md", "The paper's Table 2, repeatable (CPU)", flag, {"table2": done["table2"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
