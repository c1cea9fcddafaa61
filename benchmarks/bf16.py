"""What bf16 inference costs in accuracy and gains in speed on this CPU (opt-in: ``bf16=True``).

    python benchmarks/bf16.py            # writes benchmarks/bf16.md (quiet machine: about 15 minutes)
    python benchmarks/bf16.py --quick    # smoke run: builtin data only, 2 epochs, a tiny model, printed only

Accuracy: a tiny CSP model is trained with `cspnet train` on real data (the built-in digits and, where
../shared/data is present, the Fashion-MNIST subset), then its validation set is classified by the
fp32 model and by the bf16 forms: the whole model cast to bf16 (`optimize_for_inference`'s ``bf16``
candidate: weights and activations in bf16, channels-last) and fp32 weights under bf16 autocast (what
``cspnet val --amp`` runs). Speed: the four CSP models of benchmarks/inference.md at batch 1, every
fp32 and bf16 candidate of ``optimize_for_inference`` timed interleaved in one call per model.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import cspnet
from cspnet.bench.child import machine_info
from cspnet.checkpoint import atomic_write_bytes, read_metadata
from cspnet.data import build_classify_data, collate
from cspnet.inference.fuse import fuse
from cspnet.inference.optimize import bf16_supported, make_candidate, optimize_for_inference

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "classify" / "fashion_mnist"
MODELS = [("cspresnext50", 256), ("cspdarknet53", 256), ("cspdensenet201", 256), ("csppeleenet", 224)]
QUICK_MODELS = [("cspresnext_tiny", 64)]


def train(spec: str, out: Path, epochs: int | None) -> Path:
    cmd = [sys.executable, "-m", "cspnet", "train", "--data", spec, "--out", str(out), "--quiet"]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    subprocess.run(cmd, check=True)
    return out / "best.safetensors"


def val_batch(spec: str, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    data = build_classify_data(spec, preprocess=meta["preprocess"])
    batch = collate([data.val[i] for i in range(len(data.val))])
    return batch["inputs"], batch["targets"]


def accuracy_rows(spec: str, ckpt: Path) -> list[str]:
    meta = read_metadata(ckpt)
    model = cspnet.create_model(checkpoint=str(ckpt)).eval()
    images, labels = val_batch(spec, meta)
    with torch.no_grad():
        ref = model(images).float()
        bf16, _ = make_candidate("bf16", fuse(cspnet.create_model(checkpoint=str(ckpt))), images)
        forms = {"fp32": ref, "bf16 (cast)": bf16(images).float()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forms["bf16 autocast"] = model(images).float()
    rows = []
    ref_pred, ref_prob = ref.argmax(1), ref.softmax(1)
    for name, logits in forms.items():
        pred = logits.argmax(1)
        top1 = 100 * (pred == labels).float().mean().item()
        top5 = 100 * (logits.topk(min(5, logits.shape[1]), 1).indices == labels[:, None]).any(1).float().mean().item()
        agree = 100 * (pred == ref_pred).float().mean().item()
        dprob = (logits.softmax(1) - ref_prob).abs().max().item()
        rows.append(f"| {spec} | {meta['model']} | {len(labels)} | {name} | {top1:.2f} | {top5:.2f} | {agree:.2f} "
                    f"| {dprob:.1e} |")
    return rows


def speed_rows(models, rounds: int) -> list[str]:
    rows = []
    for name, size in models:
        torch.manual_seed(0)
        model = cspnet.create_model(name).eval()
        x = torch.randn(1, 3, size, size)
        report = optimize_for_inference(model, x, bf16=True, rounds=rounds, warmup=2).report
        fp32 = [r for n, r in report.candidates.items() if "bf16" not in n and r.latency is not None]
        best = min(fp32, key=lambda r: r.latency.median)
        for n, r in report.candidates.items():
            if r.latency is None:
                note = r.error or "outside tolerance"
                rows.append(f"| {name} | {size} | {n} |  |  | {r.max_diff or 0:.1e} | {note} |")
                continue
            rows.append(f"| {name} | {size} | {n} | {r.latency.median * 1e3:.2f} | "
                        f"{r.latency.median / best.latency.median:.2f} | {r.max_diff:.1e} | "
                        f"{'fastest fp32' if r is best else ''} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="builtin data, 2 epochs, a tiny model; print only")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    if not bf16_supported(torch.device("cpu")):
        raise SystemExit("this CPU has no native bf16 (AVX512-BF16/AMX): nothing to measure")
    specs = ["builtin"] + ([str(SHARED)] if SHARED.is_dir() and not args.quick else [])
    before = machine_info()
    acc = []
    with tempfile.TemporaryDirectory(prefix="cspnet-bf16-") as tmp:
        for i, spec in enumerate(specs):
            acc += accuracy_rows(spec, train(spec, Path(tmp) / f"run{i}", 2 if args.quick else None))
    speed = speed_rows(QUICK_MODELS if args.quick else MODELS, 3 if args.quick else args.rounds)
    text = "\n".join([
        "# bf16 inference on this CPU: accuracy cost and speed",
        "",
        f"Written by `python benchmarks/bf16.py` on {datetime.date.today()}.",
        f"Before: {before}.  ",
        f"After: {machine_info()}.",
        "",
        "bf16 is opt-in (`optimize_for_inference(..., bf16=True)`); the default path stays fp32 and exact.",
        "",
        "## Accuracy on real validation data",
        "",
        "Each model was trained by `cspnet train` with its defaults on the data named; the same validation "
        "images are then classified in fp32 and in bf16. 'agree' is the share of images whose top-1 class "
        "equals fp32's; 'max abs dp' the largest change of any class probability.",
        "",
        "| data | model | images | form | top-1 (%) | top-5 (%) | agree with fp32 (%) | max abs dp |",
        "|---|---|---:|---|---:|---:|---:|---:|",
        *acc,
        "",
        "## Speed at batch 1 (random weights), fp32 and bf16 candidates timed interleaved",
        "",
        "'vs fp32' is the latency over the fastest fp32 form's; 'max diff' is the largest output difference "
        "from eager fp32 relative to the output scale (fp32 forms must stay within 1e-4; bf16 forms within "
        "5e-2).",
        "",
        "| model | size | form | latency b1 (ms) | vs fp32 | max diff | note |",
        "|---|---:|---|---:|---:|---:|---|",
        *speed,
        "",
    ])
    print(text)
    if not args.quick:
        atomic_write_bytes(HERE / "bf16.md", text.encode())
        print(f"wrote {HERE / 'bf16.md'}")


if __name__ == "__main__":
    main()
