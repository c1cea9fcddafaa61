"""The report of an ablation (:mod:`.ablate`): one row per variant laid out like the paper's Table 1
(params and GFLOPs with their change against the baseline, top-1 mean and standard deviation over
seeds, training wall time, CPU latency at batch 1), a CSV with one row per run, and a plot of top-1
against GFLOPs.

Costs are counted on each variant's trained checkpoint (:mod:`cspnet.bench.profile`), so they are
those of the model that trained, at its input size and channels. Latencies come from
:func:`cspnet.bench.run_bench` with every variant timed in the same interleaved rounds, at report
time, so they compare with each other even on a busy machine (not with another day's figures).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import atomic_write_bytes, read_metadata
from .ablate import Recipe, Run, Variant

BEST = "best.safetensors"
LATENCY_ENGINE = "eager"  # plain PyTorch: the same code path for every variant, no per-model compile
CPU_FLAGS = ("avx2", "avx512", "amx")  # the flag prefixes that decide the CPU kernels torch can use
CSV_FIELDS = ("variant", "model", "gamma", "fusion", "seed", "params_m", "gflops", "top1", "top5", "loss",
              "best_top1", "epochs", "wall_s", "run_dir")


@dataclass
class Summary:
    """One variant over its seeds."""

    variant: Variant
    params: int
    gflops: float
    img_size: int
    in_chans: int
    top1: list[float]
    wall_s: list[float]
    epochs: int
    latency_ms: float | None = None
    d_params: float = 0.0  # % change against the baseline
    d_gflops: float = 0.0
    d_top1: float = 0.0  # points

    @property
    def top1_mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def top1_std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0


def summarize(variants: Sequence[Variant], runs: Sequence[Run]) -> list[Summary]:
    """Per variant: its cost (from its first seed's checkpoint) and its seeds' results; deltas
    against the first variant, the baseline."""
    from ..bench.profile import profile
    from ..models import create_model

    out = []
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        ckpt = mine[0].run_dir / BEST
        pre = read_metadata(ckpt).get("preprocess", {})
        model = create_model(checkpoint=str(ckpt))
        prof = profile(model, pre["img_size"], pre["in_chans"])
        out.append(Summary(v, prof.params, prof.gflops, pre["img_size"], pre["in_chans"],
                           [float(r.metrics["top1"]) for r in mine], [float(r.metrics["wall_s"]) for r in mine],
                           int(mine[0].metrics["epoch"])))
    base = out[0]
    for s in out:
        s.d_params = 100 * (s.params / base.params - 1)
        s.d_gflops = 100 * (s.gflops / base.gflops - 1)
        s.d_top1 = s.top1_mean - base.top1_mean
    return out


def measure_latency(summaries: Sequence[Summary], runs: Sequence[Run], rounds: int, progress: bool) -> None:
    """Batch-1 CPU latency of every variant's trained model, all timed in the same interleaved rounds."""
    from ..bench import run_bench

    ckpts = {s.variant: str(next(r for r in runs if r.variant == s.variant).run_dir / BEST) for s in summaries}
    result = run_bench(list(ckpts.values()), engines=(LATENCY_ENGINE,), img_size=summaries[0].img_size,
                       batch_size=1, rounds=rounds, warmup=2, memory=False, progress=progress)
    by_path = {row.model: row.lat_ms for row in result.rows}
    for s in summaries:
        s.latency_ms = by_path.get(ckpts[s.variant])


def cpu_flags() -> str:
    """The vector-extension flags of this CPU (first ``flags`` line of /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = [f for f in line.partition(":")[2].split() if f.startswith(CPU_FLAGS)]
    return " ".join(flags) or "none of avx2/avx512*/amx*"


def _signed(x: float, unit: str = "%") -> str:
    return f"{x:+.1f}{unit}"


def format_table(summaries: Sequence[Summary]) -> str:
    """The Table 1 layout: the baseline first, then each fusion x gamma."""
    seeds = len(summaries[0].top1)
    lines = [
        f"| model | gamma | fusion | params (M) | d params | GFLOPs | d GFLOPs | top-1 % (mean ± std, {seeds} seeds) "
        "| d top-1 | wall s / run | CPU ms (b1) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        v, base = s.variant, s is summaries[0]
        lat = f"{s.latency_ms:.2f}" if s.latency_ms is not None else "–"
        n_seeds = "" if len(s.top1) == seeds else f" ({len(s.top1)} seeds)"  # a partial report
        lines.append(
            f"| {v.model} | {'–' if v.is_baseline else f'{v.gamma:g}'} | {v.fusion} | {s.params / 1e6:.4f} | "
            f"{'–' if base else _signed(s.d_params)} | {s.gflops:.4g} | {'–' if base else _signed(s.d_gflops)} | "
            f"{s.top1_mean:.2f} ± {s.top1_std:.2f}{n_seeds} | {'–' if base else _signed(s.d_top1, '')} | "
            f"{statistics.fmean(s.wall_s):.0f} | {lat} |"
        )
    return "\n".join(lines)


def format_report(summaries: Sequence[Summary], recipe: Recipe, command: str, partial: str = "") -> str:
    s0 = summaries[0]
    within = [s for s in summaries[1:] if s.d_gflops < 0 and s.d_top1 >= -0.5]
    verdict = ", ".join(f"{s.variant.fusion} g{s.variant.gamma:g} ({_signed(s.d_gflops)} GFLOPs, "
                        f"{_signed(s.d_top1, '')} top-1)" for s in within) or "none"
    import torch

    parts = [
        f"# Ablation: {recipe.family} family, gamma x fusion\n",
        *([f"**Partial report**: {partial}\n"] if partial else []),
        f"Written by `{command}`.\n",
        f"- data `{recipe.data}`, input {s0.in_chans}x{s0.img_size}x{s0.img_size}, {s0.epochs} epochs, "
        f"{len(s0.top1)} seeds (0..{len(s0.top1) - 1}) per variant, the same recipe for every run",
        f"- sizes: width multiplier {recipe.width_mult:g}, depth multiplier {recipe.depth_mult:g} on every "
        "variant alike (`width_mult`/`depth_mult` config overrides)",
        "- top-1: the last epoch's, on the validation split; d = change against the baseline "
        "(params and GFLOPs in %, top-1 in points); GFLOPs = 2 x multiply-adds at the input size; wall s: "
        "training and evaluation time of a run (mean over seeds), as loaded as this machine was when it ran",
        (f"- CPU ms: batch-1 latency (median), engine `{LATENCY_ENGINE}`, all variants timed interleaved in one "
         f"`cspnet.bench.run_bench` call, {torch.get_num_threads()} threads; CPU flags: {cpu_flags()}"
         if any(s.latency_ms is not None for s in summaries) else "- CPU ms: not measured (`--rounds 0`)"),
        f"- at lower GFLOPs and within 0.5 point top-1 of the baseline: {verdict}",
        *fusion_lines(summaries),
        "",
        format_table(summaries),
        "",
        "![top-1 against GFLOPs](ablation.png)",
        "",
    ]
    return "\n".join(parts)


def fusion_lines(summaries: Sequence[Summary]) -> list[str]:
    """Per fusion, the mean change of GFLOPs and top-1 over its gammas (the paper's Figure 4 ordering)."""
    lines = []
    for fusion in dict.fromkeys(s.variant.fusion for s in summaries[1:]):
        mine = [s for s in summaries[1:] if s.variant.fusion == fusion]
        lines.append(f"- fusion {fusion}, mean over gamma {', '.join(f'{s.variant.gamma:g}' for s in mine)}: "
                     f"{_signed(statistics.fmean(s.d_gflops for s in mine))} GFLOPs, "
                     f"{_signed(statistics.fmean(s.d_top1 for s in mine), '')} top-1")
    return lines


def runs_csv(runs: Sequence[Run], summaries: Sequence[Summary]) -> str:
    cost = {s.variant: s for s in summaries}
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in runs:
        m, s = r.metrics, cost[r.variant]
        w.writerow({"variant": r.variant.key, "model": r.variant.model,
                    "gamma": "" if r.variant.gamma is None else r.variant.gamma, "fusion": r.variant.fusion,
                    "seed": r.seed, "params_m": f"{s.params / 1e6:.6f}", "gflops": f"{s.gflops:.6f}",
                    "top1": m["top1"], "top5": m.get("top5"), "loss": m.get("loss"),
                    "best_top1": m.get("best_top1"), "epochs": m.get("epoch"), "wall_s": f"{m['wall_s']:.1f}",
                    "run_dir": str(r.run_dir)})
    return buf.getvalue()


def plot(summaries: Sequence[Summary], path: Path, title: str) -> None:
    """Top-1 against GFLOPs: one labelled point per variant, error bars = std over seeds, the
    baseline marked and its top-1 drawn across, a marker per fusion."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"first": "s", "last": "^", "full": "o"}
    base = summaries[0]
    ax.axhline(base.top1_mean, color="grey", lw=0.8, ls="--", zorder=0)
    ax.errorbar([base.gflops], [base.top1_mean], yerr=[base.top1_std], fmt="*", ms=14, color="black",
                capsize=3, label=f"baseline ({base.variant.model})")
    for fusion, marker in markers.items():
        pts = [s for s in summaries[1:] if s.variant.fusion == fusion]
        if pts:
            ax.errorbar([s.gflops for s in pts], [s.top1_mean for s in pts], yerr=[s.top1_std for s in pts],
                        fmt=marker, ms=7, capsize=3, label=f"CSP fusion {fusion}")
    for s in summaries[1:]:
        ax.annotate(f"g{s.variant.gamma:g}", (s.gflops, s.top1_mean), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("GFLOPs (2 x multiply-adds)")
    ax.set_ylabel(f"top-1 % (mean ± std over {len(base.top1)} seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_report(out: Path, variants: Sequence[Variant], runs: Sequence[Run], recipe: Recipe, command: str,
                 rounds: int = 25, progress: bool = True, partial: str = "") -> list[Summary]:
    """``report.md``, ``runs.csv`` and ``ablation.png`` in ``out``; returns the summaries."""
    summaries = summarize(variants, runs)
    if rounds:
        measure_latency(summaries, runs, rounds, progress)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.md", format_report(summaries, recipe, command, partial).encode())
    atomic_write_bytes(out / "runs.csv", runs_csv(runs, summaries).encode())
    data = recipe.data.split(":")[1] if recipe.data.startswith("torchvision:") else Path(recipe.data).name
    title = (f"{recipe.family}: top-1 vs GFLOPs ({data or recipe.data}, width x{recipe.width_mult:g}, "
             f"depth x{recipe.depth_mult:g})")
    plot(summaries, out / "ablation.png", title)
    return summaries
