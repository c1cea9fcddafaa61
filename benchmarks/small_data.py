"""Short runs on small real data: cspnet's defaults against a 20-line Adam CNN; writes
benchmarks/small_data.md.

(a) AdamW's rate x schedule on three small sets (the built-in digits, the Fashion-MNIST subset in
    ../shared/data/classify/fashion_mnist, and tree-crown vs background patches cut from the aerial
    tiles in ../shared/data/detect/deepforest_trees, which come from the deepforest wheel): what
    sets the default AdamW rate.
(b) `cspnet train --data DIR --epochs 8` with nothing else (the defaults, `--optimizer auto`) beside
    the naive CNN on the same splits: the Fashion-MNIST subset, a 1,000 / 200 image split of the
    official Fashion-MNIST files (100 / 20 per class), and that split again with broken and odd files
    mixed in (a truncated PNG, a text file and an empty file named as images; an RGBA, a palette and a
    9 px image among the training images).

Every cspnet figure is a `cspnet train` run in a subprocess, exactly as a user types it; top-1 is the
last epoch's on the validation split (no checkpoint picked on it). Each run's directory is kept under
--work, so an interrupted benchmark re-runs only what is missing (--fresh starts over).

    python benchmarks/small_data.py [--part rates|defaults|all] [--seeds 2] [--rate-seeds 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cspnet.bench.child import machine_info
from cspnet.checkpoint import atomic_write_bytes
from cspnet.data import build_classify_data, collate
from cspnet.data.classify import ClassifySamples
from cspnet.engine.runtime import seed_everything

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
OUT = HERE / "small_data.md"
EPOCHS = 8
RATES = (1e-3, 3e-3, 1e-2)
WARMUPS = (1.0, 0.0)  # warm-up epochs before the cosine decay
RATES_RECIPE = ("--batch-size", "64", "--crop")  # (a) ran with these, the defaults then
PATCH = 32  # tree patches, pixels


# --- the data ---------------------------------------------------------------------------------


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def fashion_1k(work: Path) -> Path:
    """100 / 20 images per class from the official train / test files, as an ImageFolder."""
    from torchvision.datasets import FashionMNIST

    root = work / "fashion_1k"
    if (root / "done").exists():
        return root
    for split, train, per_class in (("train", True, 100), ("val", False, 20)):
        ds = FashionMNIST(str(SHARED / "classify"), train=train, download=False)
        counts = np.zeros(10, int)
        for i, label in enumerate(ds.targets.tolist()):
            if counts[label] < per_class:
                _save_png(Image.fromarray(ds.data[i].numpy(), "L"), root / split / str(label) / f"{i:05d}.png")
                counts[label] += 1
    (root / "done").touch()
    return root


def fashion_1k_odd(work: Path) -> Path:
    """fashion_1k with three unreadable files and three odd but readable ones mixed in."""
    from torchvision.datasets import FashionMNIST

    clean, root = fashion_1k(work), work / "fashion_1k_odd"
    if (root / "done").exists():
        return root
    shutil.copytree(clean, root, dirs_exist_ok=True)
    (root / "done").unlink()
    buf = io.BytesIO()
    Image.open(next((root / "train" / "0").iterdir())).save(buf, "PNG")
    (root / "train" / "1" / "00000_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "train" / "2" / "00000_notes.png").write_text("not an image\n")
    (root / "train" / "3" / "00000_empty.jpg").write_bytes(b"")
    ds = FashionMNIST(str(SHARED / "classify"), train=True, download=False)
    extra = {label: i for i, label in reversed(list(enumerate(ds.targets.tolist())))}  # each class's last image
    grey = {label: Image.fromarray(ds.data[i].numpy(), "L") for label, i in extra.items()}
    _save_png(grey[4].convert("RGBA"), root / "train" / "4" / "99999_rgba.png")
    _save_png(grey[5].convert("P"), root / "train" / "5" / "99999_palette.png")
    _save_png(grey[6].resize((9, 9), Image.BILINEAR), root / "train" / "6" / "99999_9px.png")
    (root / "done").touch()
    return root


def tree_patches(work: Path) -> Path:
    """Tree crowns (the labelled boxes) and background (random squares clear of every box) cut from
    the aerial tiles, PATCH px, as a two-class ImageFolder."""
    root = work / "tree_patches"
    if (root / "done").exists():
        return root
    src = SHARED / "detect" / "deepforest_trees"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for image_path in sorted((src / "images" / split).iterdir()):
            tile = Image.open(image_path).convert("RGB")
            w, h = tile.size
            rows = (src / "labels" / split / f"{image_path.stem}.txt").read_text().split()
            boxes = np.array(rows, float).reshape(-1, 5)[:, 1:] * [w, h, w, h]
            xyxy = np.c_[boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2]
            for k, (x0, y0, x1, y1) in enumerate(xyxy):
                crop = tile.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))).resize((PATCH, PATCH))
                _save_png(crop, root / split / "tree" / f"{image_path.stem}_{k}.png")
            for k in range(len(xyxy)):  # as many background squares as crowns
                for _ in range(50):
                    side = rng.uniform(20, 60)
                    x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
                    clear = ((xyxy[:, 0] > x + side) | (xyxy[:, 2] < x) | (xyxy[:, 1] > y + side) | (xyxy[:, 3] < y))
                    if clear.all():
                        crop = tile.crop((int(x), int(y), int(x + side), int(y + side))).resize((PATCH, PATCH))
                        _save_png(crop, root / split / "background" / f"{image_path.stem}_{k}.png")
                        break
    (root / "done").touch()
    return root


# --- the runs ---------------------------------------------------------------------------------


def cspnet_run(work: Path, key: str, data: str, seed: int, options: list[str]) -> dict:
    """``cspnet train`` as a user types it; its metrics.json (kept: a second call reads it back)."""
    out = work / "runs" / key
    metrics = out / "metrics.json"
    if not metrics.exists():
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "cspnet", "train", "--data", data, "--epochs", str(EPOCHS), "--seed", str(seed),
               "--quiet", "--threads", "1", "--out", str(out), *options]
        print(" ".join(cmd[2:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(metrics.read_text())


class NaiveCNN(nn.Sequential):
    """The 20-line CNN of a PyTorch tutorial: two conv-ReLU-pool blocks and two linear layers."""

    def __init__(self, in_chans: int, classes: int, size: int):
        super().__init__(
            nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, classes),
        )


def naive_run(work: Path, key: str, data: str, seed: int) -> dict:
    """Adam(1e-3), batch 64, no augmentation, EPOCHS epochs, on the images exactly as cspnet's
    validation transform gives them (same size, channels and normalisation)."""
    path = work / "runs" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(seed)
    torch.set_num_threads(1)  # as the cspnet runs (--threads 1)
    d = build_classify_data(data)
    val_transform = d.val.transform
    train = ClassifySamples(d.train.source, val_transform, substitute=False)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, collate_fn=collate)
    model = NaiveCNN(d.in_chans, len(d.classes), d.preprocess["img_size"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for batch in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(batch["inputs"]), batch["targets"]).backward()
            opt.step()
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(d.val, batch_size=256, collate_fn=collate):
            right += (model(batch["inputs"]).argmax(1) == batch["targets"]).sum().item()
            total += len(batch["targets"])
    result = {"top1": 100 * right / total, "wall_s": time.perf_counter() - start}
    atomic_write_bytes(path, json.dumps(result).encode())
    return result


# --- the report -------------------------------------------------------------------------------


def _mean_range(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else f"{values[0]:.1f}"


def part_rates(work: Path, sets: dict[str, str], seeds: list[int]) -> list[str]:
    lines = ["## (a) AdamW: rate x schedule", "",
             f"`cspnet train --data SET --epochs {EPOCHS} --optimizer adamw --lr LR --warmup-epochs W "
             f"{' '.join(RATES_RECIPE)}` (cosine decay after the warm-up, random crops and the task's flips: the "
             "defaults before this table), and the SGD default (0.2 x batch / 256) beside them; "
             f"final top-1 (%), mean (range) over seeds {seeds}.", ""]
    head = ["optimizer", "lr", "warm-up epochs", *sets]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(sets)]
    configs = [("adamw", lr, w) for lr in RATES for w in WARMUPS] + [("sgd", None, 1.0)]
    for opt, lr, warm in configs:
        cells = []
        for name, data in sets.items():
            options = ["--optimizer", opt, "--warmup-epochs", f"{warm:g}", *RATES_RECIPE]
            options += ["--lr", f"{lr:g}"] if lr else []
            tops = [cspnet_run(work, f"rates-{name}-{opt}-{lr}-{warm}-s{s}", data, s, options)["top1"] for s in seeds]
            cells.append(_mean_range(tops))
        lines.append(f"| {opt} | {f'{lr:g}' if lr else 'default (0.05)'} | {warm:g} | " + " | ".join(cells) + " |")
    return lines


def part_defaults(work: Path, sets: dict[str, str], seeds: list[int]) -> list[str]:
    lines = ["## (b) The defaults against a naive script", "",
             f"`cspnet train --data SET --epochs {EPOCHS}` and nothing else, beside the 20-line CNN "
             "(`NaiveCNN` in the script: Adam 1e-3, batch 64, no augmentation) trained on the same split for the "
             f"same {EPOCHS} epochs; final top-1 (%), mean (range) over seeds {seeds}; wall time per run.", "",
             "| data | train / val images | cspnet defaults | wall (s) | naive CNN | wall (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, data in sets.items():
        ours = [cspnet_run(work, f"defaults-{name}-s{s}", data, s, []) for s in seeds]
        naive = [naive_run(work, f"naive-{name}-s{s}", data, s) for s in seeds]
        d = build_classify_data(data)
        bad = sum(map(len, d.unreadable.values()))
        left = f" ({bad} unreadable left out)" if bad else ""
        lines.append(f"| {name} | {len(d.train)} / {len(d.val)}{left} | {_mean_range([r['top1'] for r in ours])} | "
                     f"{np.mean([r['wall_s'] for r in ours]):.0f} | {_mean_range([r['top1'] for r in naive])} | "
                     f"{np.mean([r['wall_s'] for r in naive]):.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("rates", "defaults", "all"), default="all")
    ap.add_argument("--seeds", type=int, default=2, help="seeds of each (b) run")
    ap.add_argument("--rate-seeds", type=int, default=1, help="seeds of each (a) run")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cspnet_small_data")
    ap.add_argument("--fresh", action="store_true", help="delete the kept runs first")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.work / "runs", ignore_errors=True)
    seeds = list(range(args.seeds))
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split(":", 1)[1].split("\n")[0]
                    .split() if f.startswith(("avx2", "avx512", "amx"))})
    lines = ["# Small real data: short runs", "",
             f"Written by `python benchmarks/small_data.py --part {args.part} --seeds {args.seeds} "
             f"--rate-seeds {args.rate_seeds}` on "
             f"{time.strftime('%Y-%m-%d %H:%M')}.", f"Machine: {machine_info()}.", f"CPU flags: {' '.join(flags)}.", ""]
    fmnist = str(SHARED / "classify" / "fashion_mnist")
    if args.part in ("rates", "all"):
        sets = {"digits (builtin)": "builtin", "Fashion-MNIST subset": fmnist,
                "tree patches": str(tree_patches(args.work))}
        lines += part_rates(args.work, sets, list(range(args.rate_seeds))) + [""]
    if args.part in ("defaults", "all"):
        sets = {"Fashion-MNIST subset": fmnist, "Fashion-MNIST 1k": str(fashion_1k(args.work)),
                "Fashion-MNIST 1k + broken and odd files": str(fashion_1k_odd(args.work)),
                "digits (builtin)": "builtin"}
        lines += part_defaults(args.work, sets, seeds) + [""]
    lines.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    target = OUT if args.part == "all" else OUT.with_name(f"small_data_{args.part}.md")
    atomic_write_bytes(target, ("\n".join(lines) + "\n").encode())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
