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

from cspnet.tools.bench import PAIRS, machine_info
from cspnet.tools.checkpoint import atomic_write_bytes
from cspnet.tools.memprobe import measure
from cspnet.tools.pairs import format_pairs, plot_pairs, run_pairs

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny pairs at 64 px, 3 rounds, batch 4")
    p.add_argument("--engine", default="torch", help="torch (our default path), eager, compile, onnxruntime")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="default: benchmarks/ (a --quick run: runs/bench-quick/)")
    args = p.parse_args()
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
    after = machine_info()
    text = "\n".join([
        "# CSP vs baseline on this CPU",
        "",
        f"Written by `python benchmarks/pairs.py` on {datetime.date.today()}.",
        f"Before: {before}.  ",
        f"After: {after}.",
        "",
        format_pairs(result, "md"),
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
