"""The paper's comparisons on this CPU: each baseline next to its CSP variant (params, FLOPs,
latency at batch 1 and 16, training-step memory), as a table and a bar plot.

    python benchmarks/pairs.py           # writes benchmarks/pairs.md and benchmarks/pairs.png (quiet machine!)
    python benchmarks/pairs.py --quick   # smoke run: tiny pairs, few rounds, written under runs/

Same as `cspnet bench --pairs -o benchmarks/pairs.md --plot benchmarks/pairs.png`, plus the machine line.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from cspnet.bench import PAIRS
from cspnet.bench.child import machine_info
from cspnet.bench.memprobe import measure
from cspnet.bench.pairs import format_pairs, plot_pairs, run_pairs
from cspnet.checkpoint import atomic_write_bytes

QUICK_PAIRS = (("resnet_tiny", "cspresnet_tiny"), ("resnext_tiny", "cspresnext_tiny"),
               ("darknet_tiny", "cspdarknet_tiny"), ("densenet_tiny", "cspdensenet_tiny"),
               ("peleenet_tiny", "csppeleenet_tiny"))


def dense_memory_line(ours: str, timm_name: str, img_size: int, batch: int) -> str:
    """Issue 6's memory target: our CSPDenseNet's training step at most 0.6x timm's DenseNet's."""
    a = measure(ours, img_size, batch, "train")
    b = measure(timm_name, img_size, batch, "train", timm=True)
    ratio = a["step_mb"] / b["step_mb"]
    return (f"One training step (forward, backward, SGD step) at batch {batch}, {img_size} px, each in a fresh "
            f"process: `{ours}` {a['step_mb']:.0f} MiB vs timm `{timm_name}` {b['step_mb']:.0f} MiB = "
            f"**{ratio:.2f}x** (target <= 0.60x: {'met' if ratio <= 0.6 else 'NOT met'}). Peak process RSS: "
            f"{a['peak_mb']:.0f} vs {b['peak_mb']:.0f} MiB.")


MARK = "=====primitives"


def primitive_child(name: str, size: int, batch: int, runs: int) -> None:
    """Run ``name``'s oneDNN Graph form ``runs`` times after a marker (ONEDNN_VERBOSE set by the parent)."""
    import copy
    import time

    import torch

    import cspnet
    from cspnet.inference.fuse import fuse
    from cspnet.inference.heap import retain_freed_memory
    from cspnet.inference.optimize import make_candidate

    retain_freed_memory()  # as the default path runs it: no page faults from a trimmed heap
    model = cspnet.create_model(name).eval()
    x = torch.randn(batch, 3, size, size)
    fn, _ = make_candidate("onednn_graph", fuse(copy.deepcopy(model)), x)
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        print(MARK, flush=True)
        start = time.perf_counter()
        for _ in range(runs):
            fn(x)
        print(f"WALL {(time.perf_counter() - start) / runs * 1e3}", flush=True)


def primitive_profile(name: str, size: int, batch: int, runs: int) -> dict:
    """Per forward: wall ms, and oneDNN's own calls and ms by kind, from ONEDNN_VERBOSE in a child."""
    import os
    import re
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--primitives", name, str(size), str(batch), str(runs)]
    out = subprocess.run(cmd, env={**os.environ, "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True,
                         check=True).stdout
    lines = out.split(MARK, 1)[1].splitlines()
    prof = {"wall": 0.0, "calls": 0, "ms": {}}
    for line in lines:
        if line.startswith("WALL "):
            prof["wall"] = float(line.split()[1])
        f = line.split(",")
        if len(f) < 8 or f[2:4] != ["primitive", "exec"]:
            continue
        kind = f[5]
        if kind == "convolution":
            k = re.search(r"kh(\d+)", f[-2])
            kind = "1x1 conv" if k and k.group(1) == "1" else "kxk conv"
        prof["calls"] += 1
        prof["ms"][kind] = prof["ms"].get(kind, 0.0) + float(f[-1])
    prof["calls"] /= runs
    prof["ms"] = {k: v / runs for k, v in prof["ms"].items()}
    return prof


KINDS = ("1x1 conv", "kxk conv", "concat", "reorder", "pooling")


def primitive_table(pairs, size: int | None, batches=(1, 16), runs: int = 10) -> str:
    """Where the time goes in the oneDNN Graph form of each model: the evidence for which pairs follow
    their FLOPs in time and which do not."""
    from cspnet.models.spec import default_img_size, load_model

    head = ["model", "batch", "wall (ms)", "oneDNN (ms)", "outside oneDNN (ms)", "oneDNN calls"]
    lines = ["| " + " | ".join(head + [f"{k} (ms)" for k in KINDS] + ["other (ms)"]) + " |",
             "|---|---:|" + "---:|" * (len(head) - 2 + len(KINDS) + 1)]
    for pair in pairs:
        for name in pair:
            s = size or default_img_size(load_model(name))
            for b in batches:
                p = primitive_profile(name, s, b, runs if b == 1 else max(2, runs // 4))
                total = sum(p["ms"].values())
                kinds = [p["ms"].get(k, 0.0) for k in KINDS]
                cells = [name, str(b), f"{p['wall']:.2f}", f"{total:.2f}", f"{p['wall'] - total:.2f}",
                         f"{p['calls']:.0f}"] + [f"{v:.2f}" for v in kinds] + [f"{max(0.0, total - sum(kinds)):.2f}"]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny pairs at 64 px, 3 rounds, batch 4")
    p.add_argument("--engine", default="torch", help="torch (our default path), eager, compile, onnxruntime")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="default: benchmarks/ (a --quick run: runs/bench-quick/)")
    p.add_argument("--primitives", nargs=4, help=argparse.SUPPRESS)  # primitive_profile's child
    args = p.parse_args()
    if args.primitives:
        name, size, batch, runs = args.primitives
        primitive_child(name, int(size), int(batch), int(runs))
        return
    here = Path(__file__).parent
    out = args.out_dir or (here.parent / "runs" / "bench-quick" if args.quick else here)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        pairs, rounds, size, batch = QUICK_PAIRS, 3, 64, 4
    else:
        pairs, rounds, size, batch = PAIRS, args.rounds, None, 16
    before = machine_info()
    result = run_pairs(pairs, args.engine, size, batch, rounds=rounds)
    memory = dense_memory_line(*(("cspdensenet_tiny", "densenet121", 64) if args.quick else
                                 ("cspdensenet201", "densenet201", 224)), batch)
    primitives = primitive_table(pairs, size, (1, batch), 2 if args.quick else 10)
    after = machine_info()
    text = "\n".join([
        "# CSP vs baseline on this CPU",
        "",
        f"Written by `python benchmarks/pairs.py` on {datetime.date.today()}.",
        f"Before: {before}.  ",
        f"After: {after}.",
        "",
        format_pairs(result, "md"),
        "## Where the time goes",
        "",
        "Each model's oneDNN Graph form (what our default path chooses for most of these models on this CPU, "
        "see benchmarks/inference.md), "
        "one forward pass averaged over several, with ONEDNN_VERBOSE in a separate process: oneDNN's own "
        "time by primitive kind, its number of calls, and the wall time outside oneDNN (TorchScript's "
        "interpreter, its checks of each partition's inputs, and waking the OpenMP threads). oneDNN Graph "
        "has no slice op, so the conv before each sliced CSP split (CSPPeleeNet, CSPDenseNet) runs as two "
        "convs, one per part (`cspnet.inference.fuse.presplit_slices`); before that, each slice ended a "
        "partition and cost a reorder out of oneDNN's blocked layout and one back in. Verbose logging "
        "itself adds a little to every call.",
        "",
        primitives,
        "## Training memory against timm's DenseNet",
        "",
        memory,
        "",
        "![relative change, CSP vs baseline](pairs.png)",
        "",
    ])
    atomic_write_bytes(out / "pairs.md", text.encode())
    plot_pairs(result, out / "pairs.png")
    print(text)
    print(f"wrote {out / 'pairs.md'} and {out / 'pairs.png'}")


if __name__ == "__main__":
    main()
