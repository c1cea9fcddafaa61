"""What a benchmark found, as a table: one :class:`Row` per model x engine, and the machine figures
measured in the same run (:class:`BenchResult`), in markdown, CSV or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One model x engine. Latencies in ms; memory in MiB; ``None`` where not measured."""

    model: str
    engine: str
    img_size: int
    params_m: float
    gflops: float
    lat_ms: float | None = None
    lat_min_ms: float | None = None
    lat_spread_ms: float | None = None
    fps: float | None = None
    batch_size: int | None = None
    batch_ms: float | None = None
    img_per_s: float | None = None
    gflop_per_s: float | None = None
    peak_share: float | None = None  # achieved GFLOP/s at batch 1 / matmul peak
    train_ms: float | None = None
    infer_mem_mb: float | None = None
    train_mem_mb: float | None = None
    setup_s: float | None = None
    max_diff: float | None = None
    vs_timm: float | None = None  # our latency / timm's, same engine
    note: str = ""


@dataclass
class BenchResult:
    rows: list[Row]
    matmul_gflop_s: float | None
    device: str
    threads: int
    rounds: int
    notes: list[str] = field(default_factory=list)
    pattern: str = "loop"


COLUMNS = {  # key -> (header, format)
    "model": ("model", "{}"),
    "engine": ("engine", "{}"),
    "img_size": ("size", "{}"),
    "params_m": ("params (M)", "{:.2f}"),
    "gflops": ("GFLOPs", "{:.3g}"),
    "lat_ms": ("latency b1 (ms)", "{:.2f}"),
    "lat_min_ms": ("min (ms)", "{:.2f}"),
    "lat_spread_ms": ("IQR (ms)", "{:.2f}"),
    "fps": ("fps", "{:.1f}"),
    "img_per_s": ("img/s @batch", "{:.1f}"),
    "gflop_per_s": ("GFLOP/s", "{:.0f}"),
    "peak_share": ("% matmul peak", "{:.0%}"),
    "train_ms": ("train step (ms)", "{:.0f}"),
    "infer_mem_mb": ("infer mem (MiB)", "{:.0f}"),
    "train_mem_mb": ("train mem (MiB)", "{:.0f}"),
    "setup_s": ("setup (s)", "{:.1f}"),
    "max_diff": ("max diff", "{:.1e}"),
    "vs_timm": ("vs timm", "{:.2f}x"),
    "note": ("note", "{}"),
}


def _cell(row: Row, key: str) -> str:
    value = getattr(row, key)
    if value is None or value == "":
        return ""
    return COLUMNS[key][1].format(value)


def _used_columns(rows: list[Row]) -> list[str]:
    return [k for k in COLUMNS if any(getattr(r, k) not in (None, "") for r in rows)]


def format_result(result: BenchResult, fmt: str = "md") -> str:
    """The result as a markdown table (with a header of machine figures), CSV, or JSON."""
    if fmt == "json":
        import json

        return json.dumps({
            "device": result.device, "threads": result.threads, "rounds": result.rounds,
            "matmul_gflop_s": result.matmul_gflop_s, "notes": result.notes,
            "rows": [asdict(r) for r in result.rows],
        }, indent=2)
    keys = _used_columns(result.rows)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in result.rows:
            writer.writerow({k: getattr(r, k) for k in keys})
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"format {fmt!r}; choose md, csv or json")
    lines = [
        f"device {result.device}, {result.threads} threads; medians of {result.rounds} interleaved rounds "
        + ("(each batch-1 call right after an untimed call of its own, as in a loop); " if result.pattern == "loop"
           else "(sporadic: each call after 20 ms idle, none primed); ")
        + f"fp32 matmul peak {result.matmul_gflop_s:.0f} GFLOP/s (measured in the same run)",
        "",
        "| " + " | ".join(COLUMNS[k][0] for k in keys) + " |",
        "|" + "|".join("---" if k in ("model", "engine", "note") else "---:" for k in keys) + "|",
    ]
    for r in result.rows:
        lines.append("| " + " | ".join(_cell(r, k) for k in keys) + " |")
    lines += [f"\n{n}" for n in result.notes]
    return "\n".join(lines) + "\n"
