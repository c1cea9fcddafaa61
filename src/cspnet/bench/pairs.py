"""The paper's comparisons on this machine: each baseline next to its CSP variant.

For each pair the relative change (CSP vs baseline) in parameters, FLOPs, latency at batch 1 and
at a larger batch, and training-step memory. The paper's claim holds in time when the latency
ratio is no worse than the FLOPs ratio plus 5 points at batch 1 (column ``time follows FLOPs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..plots import pyplot, save_figure
from .report import BenchResult, Row, format_result
from .runner import PAIRS, run_bench

MARGIN = 0.05  # latency ratio may exceed the FLOPs ratio by this much at batch 1


@dataclass
class Pair:
    base: Row
    csp: Row

    def change(self, key: str) -> float | None:
        a, b = getattr(self.base, key), getattr(self.csp, key)
        if a is None or b is None or a == 0:
            return None
        return b / a - 1.0

    def time_follows_flops(self) -> bool | None:
        lat, flops = self.change("lat_ms"), self.change("gflops")
        if lat is None or flops is None:
            return None
        return (1 + lat) <= (1 + flops) + MARGIN


@dataclass
class PairsResult:
    pairs: list[Pair]
    bench: BenchResult


METRICS = {  # Row field -> label
    "params_m": "params",
    "gflops": "FLOPs",
    "lat_ms": "latency b1",
    "batch_ms": "latency bN",
    "train_mem_mb": "train memory",
}


def run_pairs(pairs=PAIRS, engine: str = "torch", img_size: int | None = None, batch_size: int = 16,
              device: str = "cpu", rounds: int = 25, warmup: int = 3, memory: bool = True,
              progress: bool = True) -> PairsResult:
    """Benchmark every model of ``pairs`` in one interleaved run and pair the rows up."""
    names = [n for pair in pairs for n in pair]
    result = run_bench(names, (engine,), img_size, batch_size, device, rounds, warmup,
                       memory=memory, train_memory=memory, progress=progress)
    by_name = {r.model: r for r in result.rows}
    return PairsResult([Pair(by_name[a], by_name[b]) for a, b in pairs], result)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def format_pairs(result: PairsResult, fmt: str = "md") -> str:
    rows = []
    for p in result.pairs:
        row = {"baseline": p.base.model, "csp": p.csp.model, "img_size": p.base.img_size}
        for key, label in METRICS.items():
            row[f"{label} base"] = getattr(p.base, key)
            row[f"{label} csp"] = getattr(p.csp, key)
            row[f"{label} change"] = p.change(key)
        row["time follows FLOPs"] = p.time_follows_flops()
        rows.append(row)
    if fmt == "json":
        import json

        return json.dumps({"pairs": rows, "bench": json.loads(format_result(result.bench, "json"))}, indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"format {fmt!r}; choose md, csv or json")
    b = result.bench
    batch = next((r.batch_size for r in b.rows if r.batch_size), None)
    units = {"params_m": "{:.2f} M", "gflops": "{:.3g}", "lat_ms": "{:.1f} ms", "batch_ms": "{:.0f} ms",
             "train_mem_mb": "{:.0f} MiB"}
    head = ["baseline -> CSP", "size"] + [METRICS[k] + (f" (b{batch})" if k == "batch_ms" else "")
                                          for k in METRICS] + ["time follows FLOPs"]
    lines = [
        f"engine `{b.rows[0].engine}` on {b.device}, {b.threads} threads; latency = median of {b.rounds} "
        f"interleaved rounds (at batch 1 each timed call right after an untimed one of the same model); "
        f"fp32 matmul peak {b.matmul_gflop_s:.0f} GFLOP/s in the same run. "
        f"Cells: baseline -> CSP (relative change). 'time follows FLOPs': CSP/baseline latency ratio at "
        f"batch 1 <= FLOPs ratio + {MARGIN:.0%}.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * len(METRICS) + "---|",
    ]
    for p in result.pairs:
        cells = [f"{p.base.model} -> {p.csp.model}", str(p.base.img_size)]
        for key, fmt_ in units.items():
            a, c = getattr(p.base, key), getattr(p.csp, key)
            cells.append("" if a is None or c is None else
                         f"{fmt_.format(a)} -> {fmt_.format(c)} ({_pct(p.change(key))})")
        ok = p.time_follows_flops()
        cells.append("" if ok is None else ("yes" if ok else "**no**"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n{n}" for n in b.notes]
    return "\n".join(lines) + "\n"


def plot_pairs(result: PairsResult, path: Path) -> None:
    """Grouped bars: relative change of each metric, one group per pair (below 0 = CSP cheaper)."""
    plt = pyplot()
    labels = [f"{p.base.model}\n-> {p.csp.model}" for p in result.pairs]
    keys = list(METRICS)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(labels)), 4.8))
    for i, key in enumerate(keys):
        values = [100 * (p.change(key) or 0.0) for p in result.pairs]
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=METRICS[key])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("CSP vs baseline (%)")
    ax.set_title(f"CSP vs baseline on {result.bench.device} ({result.bench.rows[0].engine} engine)")
    ax.legend(fontsize=8, ncols=len(keys), loc="lower center", bbox_to_anchor=(0.5, -0.32))
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path, dpi=120)
