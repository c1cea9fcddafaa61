"""Does CSP's FLOPs cut show in time with one thread and with two? The CSP/baseline latency ratio at
batch 1 of each pair's oneDNN Graph form (our default path's choice for them), per thread count.

    python benchmarks/threads.py           # writes benchmarks/threads.md (quiet machine!)
    python benchmarks/threads.py --quick   # tiny pairs, few rounds, printed only

Each thread count runs in a fresh process (oneDNN builds its kernels for the thread count they are
created under), where the baseline and the CSP model are timed interleaved; only ratios from one
process are compared. The point: on a small model every oneDNN call starts a parallel region, and
CSP adds calls (partial transitions, concatenations) while it removes FLOPs.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from cspnet.bench.child import print_child_result, run_child

PAIRS = (("peleenet", "csppeleenet", 224), ("densenet201", "cspdensenet201", 256),
         ("resnext50", "cspresnext50", 256))
QUICK_PAIRS = (("peleenet_tiny", "csppeleenet_tiny", 64),)


def child(threads: int, pairs, rounds: int) -> None:
    """Time each pair interleaved under ``threads`` torch threads; print JSON after a marker."""
    import torch

    import cspnet
    from cspnet.bench.profile import count_macs
    from cspnet.inference.fuse import fuse
    from cspnet.inference.heap import retain_freed_memory
    from cspnet.inference.optimize import make_candidate
    from cspnet.inference.timing import Timing, interleaved

    torch.set_num_threads(threads)
    retain_freed_memory()  # as the default path runs it: no page faults from a trimmed heap
    rows = []
    for base, csp, size in pairs:
        x = torch.randn(1, 3, size, size)
        fns, flops = {}, {}
        for name in (base, csp):
            model = cspnet.create_model(name).eval()
            flops[name] = count_macs(model, size)
            fn, _ = make_candidate("onednn_graph", fuse(model), x)
            fns[name] = lambda fn=fn, x=x: fn(x)
        with torch.no_grad():
            times = interleaved(fns, rounds, warmup=3, primed=set(fns))  # timed as in a loop (see bench)
        ms = {n: Timing.of(t).median * 1e3 for n, t in times.items()}
        rows.append(dict(base=base, csp=csp, size=size, base_ms=ms[base], csp_ms=ms[csp],
                         flops_ratio=flops[csp] / flops[base]))
    print_child_result(rows)


def measure(threads: int, quick: bool, rounds: int) -> list[dict]:
    return run_child([sys.executable, __file__, "--child", str(threads), "--rounds", str(rounds)]
                     + (["--quick"] if quick else []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    pairs = QUICK_PAIRS if args.quick else PAIRS
    if args.child:
        child(args.child, pairs, args.rounds)
        return

    from tqdm import tqdm

    from cspnet.bench.child import machine_info
    from cspnet.checkpoint import atomic_write_bytes

    before = machine_info()
    rounds = 3 if args.quick else args.rounds
    results = {t: measure(t, args.quick, rounds)
               for t in tqdm(args.threads, desc="thread counts", unit="process")}
    lines = ["| baseline -> CSP | size | threads | baseline (ms) | CSP (ms) | latency ratio | FLOPs ratio | "
             "time follows FLOPs (ratio <= FLOPs + 0.05) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, (base, csp, size) in enumerate(pairs):
        for t in args.threads:
            r = results[t][i]
            ratio = r["csp_ms"] / r["base_ms"]
            lines.append(f"| {base} -> {csp} | {size} | {t} | {r['base_ms']:.2f} | {r['csp_ms']:.2f} | {ratio:.3f} | "
                         f"{r['flops_ratio']:.3f} | {'yes' if ratio <= r['flops_ratio'] + 0.05 else 'no'} |")
    text = "\n".join([
        "# CSP vs baseline latency by thread count",
        "",
        f"Written by `python benchmarks/threads.py` on {datetime.date.today()}.",
        f"Before: {before}.  ",
        f"After: {machine_info()}.",
        "",
        "Batch 1, fp32, each model's oneDNN Graph form (BN folded, presplit slices). Each thread count ran "
        f"in its own process, where baseline and CSP were timed interleaved ({rounds} rounds, medians; each "
        "timed call right after an untimed one of the same model, as in a loop), with freed memory kept in "
        "the process as the default path does (`cspnet.inference.heap`). Compare ratios within a row, not "
        "milliseconds across processes.",
        "",
        *lines,
        "",
    ])
    if args.quick:
        print(text)
        return
    out = Path(__file__).with_suffix(".md")
    atomic_write_bytes(out, text.encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
