"""Page faults and latency of a forward pass with glibc's malloc defaults and with freed memory
retained (cspnet.inference.heap, what cspnet.optimize_for_inference does on the CPU by default).

    python benchmarks/heap.py           # writes benchmarks/heap.md (quiet machine!)
    python benchmarks/heap.py --quick   # tiny models, printed only

Each setting runs in a fresh process (malloc settings are process-wide and depend on what the
process allocated before), the settings alternating, several times. Two ways of choosing the form:
``eager+onednn_graph`` (what optimize_for_inference tries when torch.compile is unavailable, e.g. no
C++ compiler) and ``all`` (the default candidates; inductor's compilation allocates large blocks,
which raise glibc's thresholds on their own).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

from cspnet.bench.child import print_child_result, run_child

MODELS = (("peleenet", 224), ("csppeleenet", 224), ("cspresnext50", 256))
QUICK_MODELS = (("csppeleenet_tiny", 64),)
CHOICES = {"eager+onednn_graph": ["eager", "onednn_graph"], "all": None}


def child(name: str, size: int, retain: bool, choice: str, calls: int) -> None:
    import resource
    import time

    import torch

    import cspnet

    torch.manual_seed(0)
    model = cspnet.create_model(name).eval()
    x = torch.randn(1, 3, size, size)
    fast = cspnet.optimize_for_inference(model, x, candidates=CHOICES[choice], retain_memory=retain)
    for _ in range(10):
        fast(x)
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        start = time.perf_counter()
        fast(x)
        times.append(time.perf_counter() - start)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print_child_result({
        "chosen": fast.chosen, "heap": fast.report.heap, "median_ms": statistics.median(times) * 1e3,
        "faults": (r1.ru_minflt - r0.ru_minflt) / calls, "sys_ms": (r1.ru_stime - r0.ru_stime) / calls * 1e3,
    })


def measure(name: str, size: int, retain: bool, choice: str, calls: int) -> dict:
    return run_child([sys.executable, __file__, "--child", name, str(size), str(int(retain)), choice, str(calls)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        name, size, retain, choice, calls = args.child
        child(name, int(size), retain == "1", choice, int(calls))
        return

    from tqdm import tqdm

    from cspnet.bench.child import machine_info
    from cspnet.checkpoint import atomic_write_bytes

    models = QUICK_MODELS if args.quick else MODELS
    repeats, calls = (1, 20) if args.quick else (args.repeats, args.calls)
    before = machine_info()
    runs: dict[tuple, list[dict]] = {}
    jobs = [(m, s, c, r) for m, s in models for c in CHOICES for _ in range(repeats) for r in (False, True)]
    for name, size, choice, retain in tqdm(jobs, desc="processes", unit="process"):
        runs.setdefault((name, size, choice, retain), []).append(measure(name, size, retain, choice, calls))
    after = machine_info()

    lines = ["| model | size | candidates | chose | malloc | page faults / call | kernel ms / call | "
             "latency (ms) | change |", "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for name, size in models:
        for choice in CHOICES:
            base = None
            for retain in (False, True):
                rs = runs[(name, size, choice, retain)]
                ms = statistics.median(r["median_ms"] for r in rs)
                change = "" if base is None else f"{ms / base - 1:+.1%}"
                base = ms if base is None else base
                lines.append(
                    f"| {name} | {size} | {choice} | {'/'.join(sorted({r['chosen'] for r in rs}))} | "
                    f"{rs[0]['heap'] if retain else 'glibc defaults'} | "
                    f"{statistics.median(r['faults'] for r in rs):.0f} | "
                    f"{statistics.median(r['sys_ms'] for r in rs):.2f} | {ms:.2f} | {change} |")
    text = "\n".join([
        "# Freed memory kept or trimmed: page faults per forward",
        "",
        f"Written by `python benchmarks/heap.py` on {datetime.date.today()}.",
        f"Before: {before}.  ",
        f"After: {after}.",
        "",
        f"Batch 1, fp32, our default path (`cspnet.optimize_for_inference`) with glibc's malloc defaults "
        f"(`retain_memory=False`) and with freed memory retained (the default). Each row: {repeats} fresh "
        f"processes per setting, the settings alternating; in each, {calls} timed calls after 10 untimed; "
        "medians over the processes of: minor page faults and kernel (system) CPU time per call, both "
        "threads together, and the median latency. `eager+onednn_graph` is what the default path tries "
        "when torch.compile is unavailable (no C++ compiler); `all` is the default candidate list, whose "
        "torch.compile step allocates large blocks that raise glibc's thresholds on their own.",
        "",
        *lines,
        "",
    ])
    print(text)
    if not args.quick:
        atomic_write_bytes(Path(__file__).with_name("heap.md"), text.encode())


if __name__ == "__main__":
    main()
