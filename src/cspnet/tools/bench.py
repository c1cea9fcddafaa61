"""What a model costs on this machine: parameters, FLOPs, latency, throughput, memory, and how
close it comes to the machine's fp32 matmul peak, for several models and inference engines.

Every timed callable (each model x engine x batch size, and the matmul that measures the peak) is
timed round by round in a shuffled order (:func:`cspnet.tools.timing.interleaved`), so load from
other processes hits all of them alike and their ratios stay meaningful on a busy machine. A batch-1
call is timed right after an untimed call of its own, as a loop of that model alone would run it:
otherwise it would start with the caches full of whatever ran before it.

Engines:
    ``torch``        our default path, :func:`cspnet.optimize_for_inference` (its choice is noted)
    ``eager``        the plain model in eval mode, no rewrites
    ``compile``      BatchNorm folded + ``torch.compile`` with inductor freezing
    ``onednn_graph`` BatchNorm folded + a TorchScript trace fused by oneDNN Graph (CPU)
    ``onnxruntime``  the exported ONNX graph in ONNX Runtime (CPU execution provider)
    ``opencv``       the same graph in OpenCV DNN, as the paper's CPU table ran its models
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .heap import retain_freed_memory
from .optimize import make_candidate, max_difference, optimize_for_inference
from .profile import count_macs, count_params
from .timing import Timing, interleaved, synchronizer

ENGINES = ("torch", "eager", "compile", "onednn_graph", "onnxruntime", "opencv")
CANDIDATE_ENGINES = ("compile", "onednn_graph")  # one form of optimize_for_inference, forced
ONNX_ENGINES = ("onnxruntime", "opencv")
CPU_ONLY_ENGINES = (*ONNX_ENGINES, "onednn_graph")
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


def timm_counterpart(name: str) -> str:
    """timm's name for the same architecture (the timm_* models, whose weights import exactly)."""
    from ..weights import TIMM_MODELS

    for timm_name, ours in TIMM_MODELS.items():
        if ours == name:
            return timm_name
    twins = ", ".join(TIMM_MODELS.values())
    raise ValueError(f"{name} has no timm twin; --vs-timm compares the models built like timm's: {twins}")


def _matmul_runner(device: torch.device, n: int = 2048) -> tuple[Callable[[], object], float]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


@dataclass
class _Unit:
    """A model being benchmarked: its module, input and what to time."""

    key: str  # row label (a timm twin gets a "timm:" prefix)
    module: nn.Module
    img_size: int
    macs: int
    params: int
    in_chans: int
    rows: dict[str, Row] = field(default_factory=dict)
    onnx_path: Path | None = None


def _onnx_file(unit: _Unit, x: torch.Tensor, workdir: Path) -> Path:
    from .export import prepare_for_export, to_onnx_bytes

    if unit.onnx_path is None:
        path = workdir / f"{unit.key.replace(':', '_')}.onnx"
        path.write_bytes(to_onnx_bytes(prepare_for_export(unit.module), x[:1], dynamic_batch=True))
        unit.onnx_path = path
    return unit.onnx_path


def _engine_callable(engine: str, unit: _Unit, x: torch.Tensor, workdir: Path, threads: int):
    """(zero-argument callable running ``x`` through the engine, one-time setup seconds, note)."""
    start = time.perf_counter()
    note = ""
    if engine == "eager":
        fn = partial(unit.module, x)
    elif engine == "torch":
        fast = optimize_for_inference(unit.module, x)
        fn = partial(fast, x)
        r = fast.report
        note = f"chose {r.chosen}"
        if "compile" in r.candidates and r.candidates["compile"].error is None:
            note += f" (compile {r.candidates['compile'].setup_s:.0f} s)"
    elif engine in CANDIDATE_ENGINES:
        from .fuse import fuse

        compiled, _ = make_candidate(engine, fuse(copy.deepcopy(unit.module)), x)
        fn = partial(compiled, x)
    elif engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # ORT's pool threads otherwise spin-wait after each run and steal the cores from whatever is
        # timed next: interleaved, that made torch look 2-3x slower than it is
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(_onnx_file(unit, x, workdir)), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.cpu().numpy()}
        fn = lambda: sess.run(None, feed)[0]  # noqa: E731
    elif engine == "opencv":
        import cv2

        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(str(_onnx_file(unit, x, workdir)))
        xn = x.cpu().numpy()

        def fn():
            net.setInput(xn)
            return net.forward()
    else:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    return fn, time.perf_counter() - start, note


def _check_engine(engine: str, device: torch.device) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine in CPU_ONLY_ENGINES and device.type != "cpu":
        raise ValueError(f"--engine {engine} runs on the CPU only; use --device cpu")
    module = {"onnxruntime": "onnxruntime", "opencv": "cv2"}.get(engine)
    if module:
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"--engine {engine} needs {module}: pip install 'cspnet[export]'") from None


def _train_step_callable(module: nn.Module, x: torch.Tensor, num_classes: int):
    model = copy.deepcopy(module).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, max(1, num_classes), (x.shape[0],), device=x.device)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        opt.step()

    return step


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
) -> BenchResult:
    """Measure every model with every engine, interleaved; see the module docstring.

    ``train`` times a training step at ``batch_size``; ``memory`` measures the peak memory of an
    inference at batch 1 and (unless ``train_memory=False``) of a training step at ``batch_size``,
    each in a fresh child process.
    """
    train_memory = memory if train_memory is None else train_memory and memory
    from .modelspec import check_img_size, default_img_size, load_model

    if not models:
        raise ValueError("name at least one model")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    engines = tuple(dict.fromkeys(engines))
    for e in engines:
        _check_engine(e, dev)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    notes: list[str] = []
    if dev.type == "cpu":  # what the default path does, set up front so that every engine runs under it
        notes.append(f"freed memory: {retain_freed_memory()} in this process, for every engine "
                     "(glibc malloc, `cspnet.tools.heap`)")

    units: list[_Unit] = []
    for spec in models:
        module = load_model(spec).to(dev)
        size = check_img_size(module, img_size or default_img_size(module))
        params, _ = count_params(module)
        units.append(_Unit(spec, module, size, count_macs(module, size), params, _in_chans(module)))
        if vs_timm:
            try:
                import timm
            except ImportError:
                raise ValueError("--vs-timm needs timm: pip install timm") from None
            tname = timm_counterpart(spec)
            twin = timm.create_model(tname, pretrained=False).eval().to(dev)
            units.append(_Unit(f"timm:{tname}", twin, size, count_macs(twin, size), count_params(twin)[0],
                               _in_chans(twin)))

    calls: dict[str, Callable[[], object]] = {}
    meta: dict[str, tuple[_Unit, str, str]] = {}  # call key -> (unit, engine, "b1"|"bN"|"train")
    bar = tqdm(total=len(units) * len(engines), desc="prepare", unit="engine", leave=False, disable=not progress)
    with tempfile.TemporaryDirectory(prefix="cspnet-bench-") as tmp, torch.no_grad():
        workdir = Path(tmp)
        for unit in units:
            shape = (unit.in_chans, unit.img_size, unit.img_size)
            x1 = torch.randn(1, *shape, device=dev)
            xb = torch.randn(batch_size, *shape, device=dev) if batch_size > 1 else None
            with torch.no_grad():
                reference = unit.module(x1)
            for engine in engines:
                row = unit.rows[engine] = Row(unit.key, engine, unit.img_size, unit.params / 1e6,
                                              2 * unit.macs / 1e9)
                bar.set_postfix_str(f"{unit.key} {engine}")
                try:
                    fn1, setup, note = _engine_callable(engine, unit, x1, workdir, threads)
                    row.max_diff = max_difference(torch.as_tensor(fn1()), reference)
                    calls[f"{unit.key}|{engine}|b1"] = fn1
                    meta[f"{unit.key}|{engine}|b1"] = (unit, engine, "b1")
                    if xb is not None:
                        fnb, setup_b, _ = _engine_callable(engine, unit, xb, workdir, threads)
                        setup += setup_b
                        calls[f"{unit.key}|{engine}|bN"] = fnb
                        meta[f"{unit.key}|{engine}|bN"] = (unit, engine, "bN")
                    row.setup_s, row.note = setup, note
                except Exception as e:  # one engine failing must not lose the others' figures
                    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    row.note = f"failed: {msg}"
                bar.update()
            if train:
                with torch.enable_grad():
                    step = _train_step_callable(unit.module, xb if xb is not None else x1,
                                                _num_classes(unit.module))
                    step()
                key = f"{unit.key}|train"
                calls[key] = lambda s=step: _with_grad(s)
                meta[key] = (unit, "", "train")

        bar.close()
        matmul, matmul_flop = _matmul_runner(dev)
        calls[MATMUL] = matmul
        # a batch-1 call is short enough for the CPU caches to matter: time it as in a loop of its own
        primed = {k for k, (_, _, kind) in meta.items() if kind == "b1"}
        times = interleaved(calls, rounds, warmup, synchronizer(dev), progress="bench" if progress else None,
                            pause=PAUSE_S, primed=primed)

    peak = matmul_flop / Timing.of(times[MATMUL]).median / 1e9
    for key, t in times.items():
        if key == MATMUL:
            continue
        unit, engine, kind = meta[key]
        timing = Timing.of(t)
        if kind == "train":
            for row in unit.rows.values():
                row.train_ms = timing.median * 1e3
            continue
        row = unit.rows[engine]
        if kind == "b1":
            row.lat_ms, row.lat_min_ms, row.lat_spread_ms = (timing.median * 1e3, timing.min * 1e3,
                                                              timing.spread * 1e3)
            row.fps = 1.0 / timing.median
            row.gflop_per_s = 2 * unit.macs / timing.median / 1e9
            row.peak_share = row.gflop_per_s / peak
        else:
            row.batch_size, row.batch_ms = batch_size, timing.median * 1e3
            row.img_per_s = batch_size / timing.median

    if memory:
        mem_batch = batch_size
        for unit in units:
            is_timm = unit.key.startswith("timm:")
            spec = unit.key.split(":", 1)[1] if is_timm else unit.key
            infer = _memory(spec, unit.img_size, 1, "infer", device, is_timm, notes)
            trained = (_memory(spec, unit.img_size, mem_batch, "train", device, is_timm, notes)
                       if train_memory else None)
            for row in unit.rows.values():
                row.infer_mem_mb = infer
                row.train_mem_mb = trained
        notes.append(f"memory: the step's own peak (peak RSS - RSS before the step) in a fresh process; "
                     f"inference at batch 1, training at batch {mem_batch}")

    if vs_timm:
        for ours, twin in zip(units[::2], units[1::2], strict=True):
            for engine, row in ours.rows.items():
                other = twin.rows.get(engine)
                if row.lat_ms and other and other.lat_ms:
                    row.vs_timm = row.lat_ms / other.lat_ms
    rows = [row for unit in units for row in unit.rows.values()]
    return BenchResult(rows, peak, str(dev), threads, rounds, notes)


def _in_chans(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels


def _with_grad(step):
    with torch.enable_grad():
        step()


def _num_classes(module: nn.Module) -> int:
    return int(getattr(module, "num_classes", 1000) or 1000)


def _memory(spec, img_size, batch, mode, device, is_timm, notes) -> float | None:
    from .memprobe import measure

    try:
        return measure(spec, img_size, batch, mode, device, timm=is_timm)["step_mb"]
    except (ValueError, OSError) as e:
        notes.append(str(e))
        return None


# ---------------------------------------------------------------- formatting

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
        "(each batch-1 call right after an untimed call of its own, as in a loop); "
        f"fp32 matmul peak {result.matmul_gflop_s:.0f} GFLOP/s (measured in the same run)",
        "",
        "| " + " | ".join(COLUMNS[k][0] for k in keys) + " |",
        "|" + "|".join("---" if k in ("model", "engine", "note") else "---:" for k in keys) + "|",
    ]
    for r in result.rows:
        lines.append("| " + " | ".join(_cell(r, k) for k in keys) + " |")
    lines += [f"\n{n}" for n in result.notes]
    return "\n".join(lines) + "\n"


CHILD_MARK = "=====result"


def print_child_result(result) -> None:
    """What a benchmark's child process hands back: JSON on one line after a marker, so that
    library output printed before it (warnings, progress) cannot be mistaken for it."""
    import json

    print(CHILD_MARK + json.dumps(result), flush=True)


def run_child(cmd: list[str], env: dict | None = None):
    """Run a benchmark child (a fresh process: clean heap, threads and caches) and return what it
    passed to :func:`print_child_result`."""
    import json
    import subprocess

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.split(CHILD_MARK, 1)[1].splitlines()[0])


def machine_info() -> str:
    """One line naming the CPU, threads, library versions and the load when it was called, so a
    committed figure says what it was measured on and whether the machine was quiet."""
    import os
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for module, label in (("onnxruntime", "onnxruntime"), ("cv2", "OpenCV")):
        try:
            versions.append(f"{label} {__import__(module).__version__}")
        except ImportError:
            pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; "
            f"{'; '.join(versions)}; load average {load}")
