"""Training benchmarks on this machine's CPU; writes benchmarks/train_classify.md.

(a) Training throughput (images/s) at 224 px of the paper's cspresnext50 and resnext50, and of our
    timm-structure models against timm's own implementation of the same architecture, all through
    the same engine training step (SGD, fp32, same batch), timed interleaved so that load from
    other processes hits every model alike.
(b) Fashion-MNIST (60,000 train / 10,000 test, torchvision's raw files on disk): a small CSP model
    and its baseline (the same config with ``fusion="none"``) trained with the same recipe;
    top-1, parameters, FLOPs and wall time of each.

    python benchmarks/train_classify.py            # the full run (30-40 minutes on 2 quiet cores)
    python benchmarks/train_classify.py --quick    # a smoke test with a tiny budget (not for the .md)

timm is a test/benchmark dependency only: it is imported here, never by cspnet itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from cspnet.bench.child import machine_info
from cspnet.bench.profile import profile
from cspnet.checkpoint import atomic_write_bytes
from cspnet.data import build_classify_data, collate
from cspnet.engine import ClassificationTask, TrainConfig, Trainer
from cspnet.engine.runtime import seed_everything
from cspnet.inference.timing import Timing, interleaved
from cspnet.models import build_from_config, create_model, get_config
from cspnet.models.config import apply_overrides, scale_stages

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_ROOT = HERE.parents[1] / "shared" / "data" / "classify"

# (a) ours (name) vs timm (name); None: no timm counterpart (the paper's darknet structures)
THROUGHPUT_MODELS = [
    ("cspresnext50", None),
    ("resnext50", None),
    ("timm_cspresnext50", "cspresnext50"),
    ("timm_resnext50_32x4d", "resnext50_32x4d"),
]


@dataclass(frozen=True)
class Recipe:
    """(b): one recipe for both models of the A/B pair."""

    base: str = "cspdarknet53"  # scaled down below; stride-1 stem keeps 28 px images' detail
    width: float = 0.25
    depth: float = 0.34
    img_size: int = 28
    epochs: int = 18
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # engine default: 0.2 x batch / 256
    label_smoothing: float = 0.1
    hflip: float = 0.5
    crop: bool = False  # whole images (flip only) fit faster in a short schedule
    threads: int = 1  # one core computes, the loader worker has the other
    workers: int = 1
    train_images: int | None = None  # None: all 60,000
    val_images: int | None = None


# --- (a) throughput -------------------------------------------------------------------------


class RandomImages(Dataset):
    """Just enough data for a Trainer: the timed steps reuse one fixed batch."""

    def __init__(self, n: int, size: int, classes: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), []


def _timm_model(name: str):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=1000)


def throughput(batch: int, size: int, rounds: int, channels_last: bool) -> list[dict]:
    data = RandomImages(batch, size, 1000)
    cfg = TrainConfig(epochs=1, batch_size=batch, progress=False, channels_last=channels_last, warmup_epochs=0)
    task = ClassificationTask(1000, 0.1)
    entries, steps = [], {}
    for ours, theirs in THROUGHPUT_MODELS:
        for impl, name in (("cspnet", ours), ("timm", theirs)):
            if name is None:
                continue
            seed_everything(0)
            model = create_model(name, num_classes=1000) if impl == "cspnet" else _timm_model(name)
            trainer = Trainer(model, task, data, data, collate, cfg, log=lambda msg: None)
            x = data.x.contiguous(memory_format=torch.channels_last) if channels_last else data.x.clone()
            y = data.y.clone()
            key = f"{impl}:{name}"
            steps[key] = lambda t=trainer, x=x, y=y: t.train_step(x, y)
            entries.append({"key": key, "impl": impl, "model": name, "pair": ours,
                            "params": sum(p.numel() for p in model.parameters())})
    times = interleaved(steps, rounds, warmup=2, progress="train steps")
    for e in entries:
        t = Timing.of(times[e["key"]])
        e.update(step_s=t.median, step_min_s=t.min, spread_s=t.spread, images_per_s=batch / t.median)
    by_key = {e["key"]: e for e in entries}
    for e in entries:
        theirs = dict(THROUGHPUT_MODELS)[e["pair"]]
        if e["impl"] == "cspnet" and theirs:
            e["ratio"] = e["images_per_s"] / by_key[f"timm:{theirs}"]["images_per_s"]
    return entries


# --- (b) Fashion-MNIST ----------------------------------------------------------------------


def small_pair(recipe: Recipe):
    """The scaled CSP config and its baseline (same blocks, ``fusion="none"``)."""
    cfg = get_config(recipe.base)
    cfg = replace(cfg, stages=scale_stages(cfg.stages, recipe.width, recipe.depth), reference=None,
                  stem_chs=max(8, int(round(cfg.stem_chs * recipe.width))))
    return {"CSP": cfg, "baseline": apply_overrides(cfg, {"fusion": "none"})}


def fashion_mnist(recipe: Recipe, data_root: Path, run_root: Path) -> list[dict]:
    spec = f"torchvision:FashionMNIST:{data_root}"
    data = build_classify_data(spec, img_size=recipe.img_size, hflip=recipe.hflip, crop=recipe.crop)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    train = data.train if recipe.train_images is None else Subset(data.train, range(recipe.train_images))
    val = data.val if recipe.val_images is None else Subset(data.val, range(recipe.val_images))
    results = []
    for label, cfg in small_pair(recipe).items():
        seed_everything(0)
        name = f"{recipe.base}_w{recipe.width:g}_d{recipe.depth:g}" + ("" if label == "CSP" else "_nofusion")
        model = build_from_config(cfg, num_classes=10, in_chans=1, name=recipe.base)
        prof = profile(model, recipe.img_size, in_chans=1)
        run_dir = run_root / name
        tc = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, optimizer=recipe.optimizer,
                         lr=recipe.lr, workers=recipe.workers, channels_last=True)
        trainer = Trainer(model, ClassificationTask(10, recipe.label_smoothing), train, val, collate, tc,
                          run_dir=run_dir, extra={"classes": data.classes, "preprocess": data.preprocess,
                                                  "data": spec},
                          title=f"{name} on Fashion-MNIST", log=lambda msg: print(f"  {msg}", flush=True))
        print(f"{label}: {name}, {prof.params / 1e6:.3f} M params, {prof.gflops * 1e3:.2f} MFLOPs", flush=True)
        start = time.perf_counter()
        final = trainer.fit()
        results.append({
            "label": label, "name": name, "top1": final["top1"], "top5": final["top5"],
            "best_top1": final["best_top1"], "params": prof.params, "gflops": prof.gflops,
            "wall_s": time.perf_counter() - start, "images_per_s": final["images_per_s"],
            "curve": [r["val_top1"] for r in trainer.history], "run_dir": str(run_dir),
        })
    torch.set_num_threads(threads)
    return results


# --- report ---------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _load() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def report(args, recipe: Recipe, tp: list[dict] | None, fm: list[dict] | None, loads: list[str]) -> str:
    lines = [
        "# Training benchmarks (CPU)",
        "",
        f"Written by `python benchmarks/train_classify.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        f"Machine: {machine_info()}; Python {platform.python_version()}.",
        f"Load average (1/5/15 min) at the start of each part and at the end: {'; '.join(loads)}. "
        "Figures taken on a busy machine are pessimistic.",
        "",
    ]
    if args.quick:
        lines += ["**Smoke test (`--quick`): tiny budget, the figures below say nothing about the models.**", ""]
    if tp:
        import timm

        lines += [
            "## (a) Training throughput",
            "",
            f"One optimizer step of the cspnet engine (`Trainer.train_step`: forward, label-smoothed "
            f"cross-entropy, backward, gradient-norm check, SGD with momentum, schedule) on a fixed batch of "
            f"{args.batch} random "
            f"{args.size}x{args.size} RGB images, 1000 classes, fp32"
            f"{', channels-last' if args.channels_last else ''}; the same step code for every model. The "
            f"models were timed round by round in shuffled order ({args.rounds} rounds after 2 warm-up "
            f"steps each). timm {timm.__version__} builds the timm column.",
            "",
            "| model | implementation | params (M) | median step (s) | spread (s) | images/s | cspnet / timm |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for e in tp:
            ratio = f"{e['ratio']:.2f}" if "ratio" in e else ""
            lines.append(f"| {e['model']} | {e['impl']} | {e['params'] / 1e6:.2f} | {e['step_s']:.3f} | "
                         f"{e['spread_s']:.3f} | {e['images_per_s']:.2f} | {ratio} |")
        lines += [
            "",
            "`cspresnext50` and `resnext50` are the paper's darknet structures (leaky ReLU, darknet stem, "
            "partial shortcuts); `timm_*` are the same modules arranged as timm arranges them, so the last "
            "column compares implementations of one architecture. A ratio above 1 means cspnet trains faster.",
            "",
        ]
    if fm:
        csp, base = fm
        lines += [
            "## (b) Fashion-MNIST: CSP model vs its baseline",
            "",
            f"`{recipe.base}` scaled to width x{recipe.width:g}, depth x{recipe.depth:g} "
            f"(`cspnet.models.config.scale_stages`); the baseline is the same config with `fusion=\"none\"` "
            f"(the plain stages, same blocks). Both: {recipe.img_size}x{recipe.img_size} grey input, "
            f"{recipe.epochs} epochs, batch {recipe.batch_size}, {recipe.optimizer.upper()} "
            f"(lr {'0.2 x batch / 256' if recipe.lr is None else recipe.lr}, warm-up 1 epoch, cosine), "
            f"label smoothing {recipe.label_smoothing}, "
            + (f"random crop (pad {recipe.img_size // 8}) + " if recipe.crop else "no random crop, ")
            + f"horizontal flip (p {recipe.hflip}), channels-last, {recipe.threads} torch thread(s) and "
            f"{recipe.workers} loader worker(s). Train "
            f"{recipe.train_images or 60000:,} images, test {recipe.val_images or 10000:,} (the official split). "
            "Top-1 is the final epoch's (no checkpoint picked on the test set); FLOPs = 2 x multiply-adds "
            f"at {recipe.img_size} px.",
            "",
            "| model | params (M) | MFLOPs | train images/s | wall time (m:ss) | top-1 (%) | top-5 (%) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in fm:
            lines.append(f"| {r['label']}: `{r['name']}` | {r['params'] / 1e6:.3f} | {r['gflops'] * 1e3:.2f} | "
                         f"{r['images_per_s']:.0f} | {_minutes(r['wall_s'])} | {r['top1']:.2f} | {r['top5']:.2f} |")
        lines += [
            "",
            f"CSP / baseline: params x{csp['params'] / base['params']:.2f}, "
            f"FLOPs x{csp['gflops'] / base['gflops']:.2f}, "
            f"wall time x{csp['wall_s'] / base['wall_s']:.2f}, top-1 {csp['top1'] - base['top1']:+.2f} points.",
            "Published figures on Fashion-MNIST: simple CNNs about 91-93%, ResNet-class models about 94-95%.",
            "",
            "Test top-1 (%) after each epoch:",
            "",
            "| epoch | " + " | ".join(r["label"] for r in fm) + " |",
            "|---:|" + "---:|" * len(fm),
        ]
        for i in range(len(csp["curve"])):
            lines.append(f"| {i + 1} | " + " | ".join(f"{r['curve'][i]:.2f}" for r in fm) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budget to check that the script runs")
    p.add_argument("--part", choices=("all", "throughput", "fashion-mnist"), default="all")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file (default benchmarks/train_classify.md; --quick: runs/bench/...)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="folder holding FashionMNIST/raw (torchvision's layout)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe()
    if args.quick:
        args.size, args.batch, args.rounds = 64, 2, 2
        recipe = replace(recipe, epochs=1, train_images=1024, val_images=512, batch_size=64)
    out = args.out or (Path("runs/bench/train_classify_quick.md") if args.quick else HERE / "train_classify.md")
    if args.part != "throughput" and not (args.data_root / "FashionMNIST" / "raw").is_dir():
        sys.exit(f"{args.data_root}/FashionMNIST/raw not found; pass --data-root (or --part throughput)")
    loads, tp, fm = [], None, None
    if args.part in ("all", "throughput"):
        loads.append(_load())
        print(f"(a) throughput at {args.size} px, batch {args.batch}", flush=True)
        tp = throughput(args.batch, args.size, args.rounds, args.channels_last)
        for e in tp:
            print(f"  {e['impl']:>6} {e['model']:<22} {e['images_per_s']:8.2f} img/s", flush=True)
    if args.part in ("all", "fashion-mnist"):
        loads.append(_load())
        print("(b) Fashion-MNIST", flush=True)
        fm = fashion_mnist(recipe, args.data_root, Path("runs/bench/fashion_mnist" + ("_quick" if args.quick else "")))
    loads.append(_load())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, report(args, recipe, tp, fm, loads).encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
