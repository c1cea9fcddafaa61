"""Every model of the zoo: params, GFLOPs and the reference figures beside ours, CPU latency at
batch 1, and timm's latency for the models whose architecture timm has, measured in the same run.

    python benchmarks/zoo.py            # writes benchmarks/zoo.md
    python benchmarks/zoo.py --quick    # a smoke run (few rounds), printed only

Latencies are medians of interleaved, shuffled rounds (cspnet.inference.timing), so load from other
processes hits ours and timm's alike; the ratio ours/timm is the figure to read.
"""

from __future__ import annotations

import argparse
import datetime
import gc
from pathlib import Path

import torch

import cspnet
from cspnet.bench.child import machine_info
from cspnet.bench.profile import profile
from cspnet.convert.timm import TIMM_MODELS
from cspnet.inference.timing import Timing, interleaved
from cspnet.models import get_entry

OURS_TO_TIMM = {ours: timm_name for timm_name, ours in TIMM_MODELS.items()}
# The paper models whose cfg timm follows up to timm-facts.md's differences (darknet53 and
# cspdarknet53 to the parameter); resnet50/resnext50/densenet201 are darknet's, not torchvision's.
OURS_TO_TIMM.update({name: name for name in ("darknet53", "cspdarknet53", "cspresnet50", "cspresnext50")})


def img_size_of(name: str) -> int:
    """The reference resolution; a detector's own input size; the Table 1 ablations take PeleeNet's
    (224), the rest 256."""
    cfg = get_entry(name).cfg
    if getattr(cfg, "reference", None):
        return cfg.reference.img_size
    if hasattr(cfg, "img_size"):
        return cfg.img_size
    return 224 if name.startswith("csppeleenet_") else 256


def measure_group(names: list[str], rounds: int, warmup: int) -> tuple[dict[str, Timing], dict[str, int]]:
    """Latency of our models (and timm's twins) in one interleaved run, and the twins' parameter
    counts as timm builds them."""
    fns, keep, timm_params = {}, [], {}
    for name in names:
        size = img_size_of(name)
        x = torch.randn(1, 3, size, size)
        model = cspnet.create_model(name).eval()
        keep.append(model)
        fns[name] = lambda m=model, x=x: m(x)
        if name in OURS_TO_TIMM:
            import timm

            ref = timm.create_model(OURS_TO_TIMM[name], pretrained=False).eval()
            timm_params[name] = sum(p.numel() for p in ref.parameters())
            keep.append(ref)
            fns[f"timm:{name}"] = lambda m=ref, x=x: m(x)
    with torch.inference_mode():
        times = interleaved(fns, rounds, warmup, progress=", ".join(names)[:40])
    del keep
    gc.collect()
    return {k: Timing.of(v) for k, v in times.items()}, timm_params


def fmt(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, tiny models and one timm pair of each kind, print only")
    parser.add_argument("--output", default=str(Path(__file__).with_name("zoo.md")))
    args = parser.parse_args()
    names = cspnet.list_models()
    rounds, warmup = args.rounds, args.warmup
    if args.quick:
        names = [n for n in names if n.endswith("_tiny")] + ["cspdarknet53", "timm_cspdarknet53"]
        rounds, warmup = 2, 1

    machine = machine_info()  # the load before the run
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(get_entry(n).family, []).append(n)
    timings, timm_params = {}, {}
    for family_names in groups.values():
        # big families are timed in chunks so memory stays small; each chunk is interleaved
        for i in range(0, len(family_names), 8):
            chunk_times, chunk_params = measure_group(family_names[i:i + 8], rounds, warmup)
            timings.update(chunk_times)
            timm_params.update(chunk_params)

    rows = []
    for n in names:
        entry = get_entry(n)
        size = img_size_of(n)
        with torch.device("meta"):
            p = profile(cspnet.create_model(n), size)
        ref = getattr(entry.cfg, "reference", None)
        ref_params = ref.params if ref else None
        if n.startswith("timm_") and n in timm_params:
            ref_params = timm_params[n] / 1e6  # a timm structure's reference is timm itself
        ours_ms = timings[n].median * 1e3
        timm_ms = timings[f"timm:{n}"].median * 1e3 if f"timm:{n}" in timings else None
        rows.append(
            f"| {n} | {entry.family} | {size} | {p.params / 1e6:.3f} | {p.weights / 1e6:.3f} | {p.gflops:.3f} "
            f"| {fmt(ref_params, 3 if n.startswith('timm_') else 2)} | {fmt(ref.weights if ref else None, 2)} "
            f"| {fmt(ref.gflops if ref else None)} | {ours_ms:.1f} (±{timings[n].spread * 1e3:.1f}) "
            f"| {fmt(timm_ms, 1)} | {fmt(ours_ms / timm_ms if timm_ms else None, 2)} |"
        )
    header = [
        "# Model zoo: size, cost and CPU latency",
        "",
        f"Written by `python benchmarks/zoo.py` on {datetime.date.today()}: {machine}.",
        f"fp32, batch 1, eager, median of {rounds} interleaved rounds after {warmup} warm-up runs "
        "(± is the interquartile range).",
        "",
        "Params count everything (conv, BN, biases); weights count conv/fc weights only (the CSPNet README's",
        "\"#Parameter\"). GFLOPs = 2 x multiply-adds (darknet's BFLOPs) at the given input size. Reference",
        "figures come from the model's config (`cspnet info MODEL` names the source); for the `timm_*` models",
        "the reference params are timm's own count, computed by timm in the same run. The timm column times",
        "timm's implementation of the same architecture in the same interleaved run: for the `timm_*` models and",
        "for darknet53, cspdarknet53, cspresnet50 and cspresnext50, whose cfgs timm follows up to the differences",
        "in timm-facts.md (the darknet ones to the parameter).",
        "",
        "resnet50, resnext50 and densenet201 have no timm column: they are darknet's structures (no projection "
        "shortcuts, darknet's dense units), not the torchvision ones timm builds.",
        "",
        "| model | family | input | params (M) | weights (M) | GFLOPs | ref params | ref weights | ref GFLOPs "
        "| ours ms | timm ms | ours / timm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    text = "\n".join(header + rows) + "\n"
    if args.quick:
        print(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
