"""What a model costs on this machine: parameters, FLOPs, latency, throughput, memory, and how
close it comes to the machine's fp32 matmul peak, for several models and inference engines
(:mod:`.engines`).

Every timed callable (each model x engine x batch size, and the matmul that measures the peak) is
timed round by round in a shuffled order (:func:`cspnet.inference.timing.interleaved`), so load from
other processes hits all of them alike and their ratios stay meaningful on a busy machine. A batch-1
call is timed right after an untimed call of its own, as a loop of that model alone would run it:
otherwise it would start with the caches full of whatever ran before it. ``pattern="sporadic"``
times every call after 20 ms of idle time instead, unprimed (a camera frame, a request), and our
default path (``torch``) is optimized for the same pattern.

:func:`run_bench` runs in steps: build the models (:func:`build_units`), make each engine's callables
(:func:`prepare_calls`), time them all interleaved, put the times into the rows (:func:`fill_rows`),
then the memory probes (:func:`measure_memory`, each in a fresh process) and the timm comparison.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..errors import OptionError, first_line
from ..inference.compare import max_difference
from ..inference.heap import retain_freed_memory
from ..inference.timing import SPORADIC_IDLE_S, Timing, interleaved, synchronizer
from ..models.spec import check_img_size, default_img_size, input_channels, load_model
from .engines import check_engine, engine_callable, matmul_callable, train_step_callable
from .profile import count_macs, count_params
from .report import BenchResult, Row

MATMUL = "matmul"
PAUSE_S = 0.01  # between timed calls: lets the last engine's spinning worker threads go idle

# each baseline next to its CSP variant (the paper's comparisons)
PAIRS = (
    ("resnet50", "cspresnet50"),
    ("resnext50", "cspresnext50"),
    ("darknet53", "cspdarknet53"),
    ("densenet201", "cspdensenet201"),
    ("peleenet", "csppeleenet"),
)


@dataclass
class Unit:
    """A model being benchmarked: its module, input size, costs and one row per engine."""

    key: str  # row label (a timm twin gets a "timm:" prefix)
    module: nn.Module
    img_size: int
    macs: int
    params: int
    in_chans: int
    rows: dict[str, Row] = field(default_factory=dict)

    @classmethod
    def of(cls, key: str, module: nn.Module, img_size: int) -> Unit:
        return cls(key, module, img_size, count_macs(module, img_size), count_params(module)[0],
                   input_channels(module))

    @property
    def is_timm(self) -> bool:
        return self.key.startswith("timm:")

    @property
    def spec(self) -> str:
        """What :mod:`.memprobe` builds it from (a cspnet name or checkpoint, or timm's name)."""
        return self.key.split(":", 1)[1] if self.is_timm else self.key


def timm_counterpart(name: str) -> str:
    """timm's name for the same architecture (the timm_* models, whose weights import exactly)."""
    from ..convert.timm import TIMM_MODELS

    for timm_name, ours in TIMM_MODELS.items():
        if ours == name:
            return timm_name
    twins = ", ".join(TIMM_MODELS.values())
    raise ValueError(f"{name} has no timm twin; the timm comparison is for the models built like timm's: {twins}")


def build_units(models: list[str], img_size: int | None, dev: torch.device, vs_timm: bool) -> list[Unit]:
    """One unit per model (a name or checkpoint), each followed by its timm twin with ``vs_timm``."""
    units = []
    for spec in models:
        module = load_model(spec).to(dev)
        size = check_img_size(module, img_size or default_img_size(module))
        units.append(Unit.of(spec, module, size))
        if vs_timm:
            try:
                import timm
            except ImportError:
                raise ValueError("comparing with timm needs timm: pip install timm") from None
            tname = timm_counterpart(spec)
            units.append(Unit.of(f"timm:{tname}", timm.create_model(tname, pretrained=False).eval().to(dev), size))
    return units


def prepare_calls(units: list[Unit], engines: tuple[str, ...], batch_size: int, dev: torch.device, workdir: Path,
                  train: bool, progress: bool, pattern: str = "loop", calibration=None
                  ) -> tuple[dict[str, Callable], dict[str, tuple[Unit, str, str]]]:
    """Every timed callable, keyed ``model|engine|b1`` (batch 1), ``|bN`` (``batch_size``) and
    ``model|train``, with what each key measures: ``(unit, engine, "b1"|"bN"|"train")``. An engine
    that fails is noted on its row, never fatal: the other figures stand."""
    threads = torch.get_num_threads()
    calls: dict[str, Callable[[], object]] = {}
    meta: dict[str, tuple[Unit, str, str]] = {}
    bar = tqdm(total=len(units) * len(engines), desc="prepare", unit="engine", leave=False, disable=not progress)
    for unit in units:
        shape = (unit.in_chans, unit.img_size, unit.img_size)
        x1 = torch.randn(1, *shape, device=dev)
        xb = torch.randn(batch_size, *shape, device=dev) if batch_size > 1 else None
        onnx_path = workdir / f"{unit.key.replace(':', '_').replace('/', '_')}.onnx"
        with torch.no_grad():
            reference = unit.module(x1)
        for engine in engines:
            row = unit.rows[engine] = Row(unit.key, engine, unit.img_size, unit.params / 1e6, 2 * unit.macs / 1e9)
            bar.set_postfix_str(f"{unit.key} {engine}")
            try:
                setup = 0.0
                for kind, x in (("b1", x1), ("bN", xb)):
                    if x is None:
                        continue
                    fn, seconds, note = engine_callable(engine, unit.module, x, onnx_path, threads, pattern,
                                                        calibration)
                    if kind == "b1":
                        with torch.no_grad():
                            row.max_diff = max_difference(torch.as_tensor(fn()), reference)
                        row.note = note
                    elif note and note != row.note:  # the default path's choice at the batch, where it differs
                        row.note = f"{row.note}; batch {batch_size}: {note}" if row.note else note
                    calls[f"{unit.key}|{engine}|{kind}"] = fn
                    meta[f"{unit.key}|{engine}|{kind}"] = (unit, engine, kind)
                    setup += seconds
                row.setup_s = setup
            except Exception as e:  # one engine failing must not lose the others' figures
                row.note = f"failed: {first_line(e, 160)}"
            bar.update()
        if train:
            step = train_step_callable(unit.module, xb if xb is not None else x1,
                                       int(getattr(unit.module, "num_classes", 1000) or 1000))
            step()
            calls[f"{unit.key}|train"] = step
            meta[f"{unit.key}|train"] = (unit, "", "train")
    bar.close()
    return calls, meta


def fill_rows(times: dict[str, list[float]], meta: dict[str, tuple[Unit, str, str]], peak: float,
              batch_size: int) -> None:
    """Latency, throughput and peak share of every row from its timed calls."""
    for key, t in times.items():
        if key not in meta:
            continue
        unit, engine, kind = meta[key]
        timing = Timing.of(t)
        if kind == "train":
            for row in unit.rows.values():
                row.train_ms = timing.median * 1e3
            continue
        row = unit.rows[engine]
        if kind == "b1":
            row.lat_ms, row.lat_min_ms, row.lat_spread_ms = timing.median * 1e3, timing.min * 1e3, timing.spread * 1e3
            row.fps = 1.0 / timing.median
            row.gflop_per_s = 2 * unit.macs / timing.median / 1e9
            row.peak_share = row.gflop_per_s / peak
        else:
            row.batch_size, row.batch_ms = batch_size, timing.median * 1e3
            row.img_per_s = batch_size / timing.median


def measure_memory(units: list[Unit], batch_size: int, device: str, train_memory: bool, notes: list[str]) -> None:
    """Peak memory of an inference at batch 1 and of a training step at ``batch_size``, each in a
    fresh child process (:mod:`.memprobe`); a failed probe is a note."""
    from .memprobe import measure

    def probe(unit, batch, mode):
        try:
            return measure(unit.spec, unit.img_size, batch, mode, device, timm=unit.is_timm)["step_mb"]
        except (ValueError, OSError) as e:
            notes.append(str(e))
            return None

    for unit in units:
        infer = probe(unit, 1, "infer")
        trained = probe(unit, batch_size, "train") if train_memory else None
        for row in unit.rows.values():
            row.infer_mem_mb, row.train_mem_mb = infer, trained
    notes.append(f"memory: the step's own peak (peak RSS - RSS before the step) in a fresh process; "
                 f"inference at batch 1, training at batch {batch_size}")


def compare_with_timm(units: list[Unit]) -> None:
    """Each of our rows' latency over its timm twin's (same engine); units come in (ours, twin) pairs."""
    for ours, twin in zip(units[::2], units[1::2], strict=True):
        for engine, row in ours.rows.items():
            other = twin.rows.get(engine)
            if row.lat_ms and other and other.lat_ms:
                row.vs_timm = row.lat_ms / other.lat_ms


def run_bench(
    models: list[str],
    engines: tuple[str, ...] = ("torch",),
    img_size: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    rounds: int = 25,
    warmup: int = 3,
    train: bool = False,
    memory: bool = True,
    vs_timm: bool = False,
    progress: bool = True,
    train_memory: bool | None = None,
    pattern: str = "loop",
    calibration=None,
) -> BenchResult:
    """Measure every model with every engine, interleaved; see the module docstring.

    ``pattern`` is the call pattern (``loop`` or ``sporadic``) timed and optimized for;
    ``calibration`` (images, batches of them, or a data SPEC) is what the ``int8`` engine calibrates on.
    ``train`` times a training step at ``batch_size``; ``memory`` measures the peak memory of an
    inference at batch 1 and (unless ``train_memory=False``) of a training step at ``batch_size``,
    each in a fresh child process.
    """
    train_memory = memory if train_memory is None else train_memory and memory
    if not models:
        raise ValueError("name at least one model")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("{device}: no CUDA device is available here", device=device)
    if pattern not in ("loop", "sporadic"):
        raise OptionError("{pattern} is unknown; choose from loop, sporadic", pattern=pattern)
    engines = tuple(dict.fromkeys(engines))
    for e in engines:
        check_engine(e, dev)
    torch.manual_seed(0)
    notes: list[str] = []
    if dev.type == "cpu":  # what the default path does, set up front so that every engine runs under it
        notes.append(f"freed memory: {retain_freed_memory()} in this process, for every engine "
                     "(glibc malloc, `cspnet.inference.heap`)")
    units = build_units(models, img_size, dev, vs_timm)
    with tempfile.TemporaryDirectory(prefix="cspnet-bench-") as tmp, torch.no_grad():
        calls, meta = prepare_calls(units, engines, batch_size, dev, Path(tmp), train, progress, pattern,
                                    calibration)
        calls[MATMUL], matmul_flop = matmul_callable(dev)
        # a batch-1 call is short enough for the CPU caches to matter: in a loop, time it as in a
        # loop of its own; sporadic calls come after idle time, cold
        primed = {k for k, (_, _, kind) in meta.items() if kind == "b1"} if pattern == "loop" else set()
        times = interleaved(calls, rounds, warmup, synchronizer(dev), progress="bench" if progress else None,
                            pause=PAUSE_S if pattern == "loop" else SPORADIC_IDLE_S, primed=primed)
    peak = matmul_flop / Timing.of(times[MATMUL]).median / 1e9
    fill_rows(times, meta, peak, batch_size)
    if memory:
        measure_memory(units, batch_size, device, train_memory, notes)
    if vs_timm:
        compare_with_timm(units)
    rows = [row for unit in units for row in unit.rows.values()]
    return BenchResult(rows, peak, str(dev), torch.get_num_threads(), rounds, notes, pattern)
