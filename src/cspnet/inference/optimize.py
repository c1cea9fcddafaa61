"""The fastest exact way to run a model for inference on this machine.

:func:`optimize_for_inference` builds a few candidate forms of a model (BatchNorm folded eager,
channels-last, ``torch.compile`` with inductor freezing, a oneDNN Graph fused TorchScript trace on
CPU, the exported ONNX graph in ONNX Runtime and in OpenVINO where they are installed, bf16 and
int8 forms when asked for), checks each against the plain eager model on the example input, times
the exact ones interleaved under the caller's call pattern, and returns the winner of
:func:`cspnet.inference.timing.choose` wrapped in an :class:`OptimizedModel` that carries the report
(latencies, differences, one-time costs, why it won). Which form wins depends on the CPU, the
model, the input size and how often it is called, which is why it is measured rather than assumed.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import first_line
from .compare import max_difference
from .fuse import fuse, presplit_slices
from .heap import retain_freed_memory
from .int8 import Int8Accuracy
from .timing import PATTERNS, WIN_SHARE, Timing, choose, interleaved, pattern_options, synchronizer

TORCH_CANDIDATES = ("eager", "channels_last", "compile", "onednn_graph")
RUNTIME_CANDIDATES = ("onnxruntime", "openvino")  # the ONNX export in a peer engine (cpu, fp32)
FP32_CANDIDATES = TORCH_CANDIDATES + RUNTIME_CANDIDATES
BF16_CANDIDATES = ("bf16", "compile_bf16")
INT8_CANDIDATES = ("int8_openvino", "int8_onnxruntime")  # only with int8= calibration data
CANDIDATES = FP32_CANDIDATES + BF16_CANDIDATES + INT8_CANDIDATES
SLOW_CANDIDATES = ("compile", "onednn_graph", "compile_bf16")  # seconds to minutes of one-time cost
# the choice rule's order, simplest first: torch before a peer engine (no export, no extra library),
# the forms with no one-time cost first, exact before inexact
SIMPLICITY = ("eager", "channels_last", "onednn_graph", "compile", "onnxruntime", "openvino", "bf16",
              "compile_bf16", "int8_onnxruntime", "int8_openvino")
DEFAULT_ROUNDS = 20  # interleaved rounds: with 20 the median's own noise is well under the IQR the rule uses


@dataclass
class CandidateResult:
    """One candidate: its one-time cost, its largest difference from eager fp32 (relative to the
    output scale when that exceeds 1), and its latency when it was exact enough to be timed."""

    name: str
    setup_s: float = 0.0
    max_diff: float | None = None
    exact: bool = False
    latency: Timing | None = None
    error: str | None = None
    skipped: str | None = None  # why it was not tried here (a library not installed, another device)
    accuracy: Int8Accuracy | None = None  # int8 only: its measured accuracy cost


@dataclass
class OptimizeReport:
    chosen: str
    tol: float
    input_shape: tuple[int, ...]
    candidates: dict[str, CandidateResult] = field(default_factory=dict)
    heap: str = "untouched"  # what heap.retain_freed_memory said, or "untouched" where it was not called
    pattern: str = "loop"
    reason: str = ""  # why the chosen candidate won (the rule of timing.choose)

    def summary(self) -> str:
        """A small table: candidate, one-time cost, max difference, median/min/IQR latency; then the choice."""
        lines = [f"optimize_for_inference: input {tuple(self.input_shape)}, {self.pattern} calls, tolerance "
                 f"{self.tol:g}, freed memory: {self.heap}"]
        for r in self.candidates.values():
            mark = "*" if r.name == self.chosen else " "
            diff = "-" if r.max_diff is None else f"{r.max_diff:.1e}"
            if r.skipped:
                tail = f"skipped: {r.skipped}"
            elif r.error:
                tail = f"failed: {r.error}"
            elif r.latency is None:
                tail = "not timed (outside tolerance)" if not r.exact else "not timed"
            else:
                t = r.latency
                tail = f"{t.median * 1e3:8.2f} ms median, {t.min * 1e3:8.2f} ms min, {t.spread * 1e3:6.2f} ms IQR"
            lines.append(f" {mark} {r.name:<16} setup {r.setup_s:6.1f} s  diff {diff:>8}  {tail}")
            if r.accuracy is not None:
                lines.append(f"   {'':<16} {r.accuracy.summary()} (never exact)")
        lines.append(f"chose {self.chosen}: {self.reason}")
        return "\n".join(lines)


class OptimizedModel(nn.Module):
    """An inference-only module: the chosen fast form for inputs like the example, the folded eager
    model for any other shape (so an odd last batch never triggers a recompilation).

    It always runs without autograd. ``report`` says what was tried and what won; ``model`` is
    the folded eager module (its weights, for saving or inspection).
    """

    def __init__(self, model: nn.Module, fast: Callable, report: OptimizeReport, example: torch.Tensor,
                 any_shape: bool):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_fast", fast)  # not a submodule: its weights are ``model``'s or frozen copies
        self.report = report
        self.chosen = report.chosen
        self._key = (tuple(example.shape), example.dtype, example.device)
        self._any_shape = any_shape

    def forward(self, x: torch.Tensor):
        with torch.no_grad():
            if self._any_shape or (tuple(x.shape), x.dtype, x.device) == self._key:
                return self._fast(x)
            return self.model(x)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen!r}, input_shape={self._key[0]}"


class _ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.dtype = model.to(memory_format=torch.channels_last), dtype
        if dtype is not None:
            self.model.to(dtype)

    def forward(self, x):
        out_dtype = x.dtype
        if self.dtype is not None:
            x = x.to(self.dtype)
        out = self.model(x.contiguous(memory_format=torch.channels_last))
        return _cast(out, out_dtype) if self.dtype is not None else out


class _Cast(nn.Module):
    """Runs ``model`` in ``dtype`` and returns outputs in the input's dtype."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x):
        return _cast(self.model(x.to(self.dtype)), x.dtype)


def _cast(out, dtype):
    if isinstance(out, torch.Tensor):
        return out.to(dtype)
    if isinstance(out, (list, tuple)):
        return type(out)(_cast(o, dtype) for o in out)
    if isinstance(out, dict):
        return {k: _cast(v, dtype) for k, v in out.items()}
    return out


def bf16_supported(device: torch.device) -> bool:
    """Whether this device computes bf16 natively (AVX512-BF16/AMX on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _compile(module: nn.Module, example: torch.Tensor):
    """``torch.compile`` with inductor freezing (weights become constants, BN/conv/activation
    patterns fuse into oneDNN kernels) and, on CPU, the C++ wrapper (the graph's kernels are called
    from C++, not Python: on small models that per-kernel overhead is 10-20% of the latency);
    compiled on the spot so the cost is measured here."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)
    with torch.no_grad(), inductor_config.patch(freezing=True, cpp_wrapper=example.device.type == "cpu"):
        compiled(example)
    return compiled


ONEDNN_GRAPH_WARMUP = 3  # TorchScript's profiling executor specialises and fuses after two runs


def _onednn_graph(module: nn.Module, example: torch.Tensor):
    """A frozen TorchScript trace whose conv/activation/add/pool/concat ops oneDNN Graph compiles
    into partitions that pass tensors to each other in oneDNN's preferred layout (channels-last
    here), as ONNX Runtime does with NCHWc, instead of reordering around every conv. CPU fp32 only.

    The fusion switch is global in torch; it is on only while the trace is specialised here (the
    fused plan stays with the module) and restored after. A trace is exact for the example's shape
    only, which is all :class:`OptimizedModel` uses it for."""
    if example.device.type != "cpu":
        raise ValueError("oneDNN Graph fusion runs on the CPU only")
    was_on = torch._C._jit_llga_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape-dependent Python branches are baked into the trace; that is what is wanted here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated in favour of torch.compile/export, which have no oneDNN Graph
            # path on the CPU; when torch removes it, this candidate fails and is reported as such
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
            traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False, strict=False))
            for _ in range(ONEDNN_GRAPH_WARMUP):
                traced(example)
    finally:
        torch.jit.enable_onednn_fusion(was_on)
    return traced


def make_candidate(name: str, fused: nn.Module, example: torch.Tensor, onnx: Callable[[], bytes] | None = None,
                   template=None) -> tuple[Callable, bool]:
    """One candidate form of an already folded eval module (``fused`` is shared by ``eager``, copied
    by the others): (callable, whether it accepts any input shape). The peer engines need ``onnx``
    (a callable giving the model's ONNX export for the example's shape) and ``template`` (the model's
    output for the example, whose structure their outputs are given)."""
    if name in RUNTIME_CANDIDATES:
        from .runtimes import runtime_model

        if example.device.type != "cpu" or example.dtype != torch.float32:
            raise ValueError(f"{name} runs float32 on the CPU only")
        if onnx is None:
            onnx = lambda: export_bytes(fused, example)  # noqa: E731
        if template is None:
            with torch.no_grad():
                template = fused(example)
        return runtime_model(name, onnx(), template), False
    if name == "eager":
        return fused, True
    if name == "channels_last":
        return _ChannelsLast(copy.deepcopy(fused)), True
    if name == "compile":
        return _compile(copy.deepcopy(fused), example), False
    if name == "onednn_graph":
        traced = copy.deepcopy(fused)
        presplit_slices(traced)  # oneDNN Graph has no slice op: each slice would cost two reorders
        return _onednn_graph(traced, example), False
    if name == "bf16":
        return _ChannelsLast(copy.deepcopy(fused), torch.bfloat16), True
    if name == "compile_bf16":
        return _compile(_Cast(copy.deepcopy(fused), torch.bfloat16), example), False
    raise ValueError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")


def export_bytes(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> bytes:
    """The ONNX graph ``cspnet export`` writes for ``model`` (BN folded, dense blocks as
    concatenations, Mish decomposed), for the example's shape or any batch."""
    from .export import prepare_for_export, to_onnx_bytes

    return to_onnx_bytes(prepare_for_export(model), example[:1] if dynamic_batch else example,
                         dynamic_batch=dynamic_batch)


def _skip_reason(name: str, device: torch.device, example: torch.Tensor) -> str | None:
    """Why a candidate cannot be tried here, before any work: a missing library, another device."""
    from .int8 import backend_missing
    from .runtimes import missing

    if name in RUNTIME_CANDIDATES or name in INT8_CANDIDATES:
        if device.type != "cpu" or example.dtype != torch.float32:
            return "runs float32 inputs on the CPU only"
        return missing(name) if name in RUNTIME_CANDIDATES else backend_missing(name.removeprefix("int8_"))
    if name in BF16_CANDIDATES and not bf16_supported(device):
        return "this device has no native bf16"
    return None


def _int8_candidate(name: str, base: nn.Module, fused: nn.Module, example: torch.Tensor, calib, val, template,
                    max_drop: float | None, res: CandidateResult):
    """Quantize, measure the accuracy cost; the int8 callable, or None where max_drop refuses it."""
    from .int8 import accuracy_cost, int8_model

    fn, _ = int8_model(name.removeprefix("int8_"), export_bytes(base, example, dynamic_batch=True), calib, template)
    res.accuracy = accuracy_cost(fused, fn, val or calib, "validation data" if val else "calibration data")
    drop = res.accuracy.drop
    if max_drop is not None and drop is not None and drop > max_drop:
        res.error = f"refused: top-1 drop {drop:.2f} points > max_drop={max_drop:g}"
        return None
    return fn


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    candidates: Sequence[str] | None = None,
    compile: bool = True,
    runtimes: bool = True,
    bf16: bool = False,
    int8=None,
    int8_val=None,
    max_drop: float | None = None,
    pattern: str = "loop",
    tol: float = 1e-4,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = 2,
    progress: bool = False,
    retain_memory: bool = True,
) -> OptimizedModel:
    """The fastest form of ``model`` for inputs like ``example_input`` that stays within ``tol`` of
    the eager fp32 model (relative to the output scale where that exceeds 1).

    ``model`` itself is not changed (a copy is folded and compiled). Candidates, in order:
    ``eager`` (BatchNorm folded), ``channels_last``, ``compile`` (torch.compile + inductor
    freezing; its compile seconds are in the report; compiled C++ kernels are cached by torch on
    disk, so later runs compile faster), ``onednn_graph`` (CPU: a TorchScript trace fused by
    oneDNN Graph); ``compile=False`` skips those two, the ones with a one-time cost of seconds
    to minutes. ``onnxruntime`` and ``openvino`` (CPU, float32; ``runtimes=False`` skips them) run
    the model exported exactly as ``cspnet export`` writes it in that engine (the ``inference``
    extra; skipped with the reason in the report where not installed; settings in
    :mod:`cspnet.inference.runtimes`), checked like every candidate; the returned module still
    takes and returns torch tensors.

    Timing: the exact candidates are timed interleaved for ``rounds`` shuffled rounds under
    ``pattern``: ``"loop"`` (each call right after another of its own: batches in a loop) or
    ``"sporadic"`` (each call after 20 ms idle: thread pools asleep, caches cold; a few images, a
    camera). The winner is the simplest candidate within noise of the fastest (
    :func:`cspnet.inference.timing.choose`): the fastest median wins only if it was quicker than each
    simpler candidate in at least 75% of the rounds (paired by round, so load hits both alike), else
    the simpler one wins; ``report.reason`` says which. Simplest first: eager, channels_last,
    onednn_graph, compile, onnxruntime, openvino, then the inexact forms.

    ``int8`` (calibration images: a tensor, or batches of images or (images, labels)) adds the
    int8 forms (ONNX Runtime's static quantization, run in OpenVINO and in ONNX Runtime:
    :mod:`cspnet.inference.int8`), where installed. They are never exact: each one's accuracy cost
    against fp32 on ``int8_val`` (same forms; with labels, top-1 of each), else on the calibration
    data, is in the report, and one whose top-1 drop in points exceeds ``max_drop`` is refused
    (reported, not timed); the rest are timed with the exact ones. ``bf16=True`` adds the opt-in
    ``bf16`` and ``compile_bf16`` forms where the device computes bf16 natively; they are judged
    against their own, looser tolerance (5e-2) and their measured difference is reported, since
    bf16 is never exact. Failing candidates (no C++ compiler for inductor, say) are skipped and
    reported; the folded eager model is always available.

    On the CPU, ``retain_memory`` first makes glibc's malloc keep freed memory in this process
    (:func:`cspnet.inference.heap.retain_freed_memory`, process-wide; skipped where the user set malloc
    variables): without it a small model page-faults its activations back in on every call.

    Example:
        >>> import cspnet, torch
        >>> m = cspnet.create_model("cspresnext_tiny", num_classes=10)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> fast = optimize_for_inference(m, x, compile=False, runtimes=False, rounds=2)
        >>> fast.chosen in ("eager", "channels_last")
        True
        >>> bool((fast(x) - m.eval()(x)).abs().max() < 1e-4)
        True
    """
    from .int8 import calibration_batches

    if not isinstance(example_input, torch.Tensor):
        raise ValueError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if tol <= 0:
        raise ValueError(f"tol={tol} must be > 0")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern={pattern!r} is unknown; choose from {', '.join(PATTERNS)}")
    if max_drop is not None and max_drop < 0:
        raise ValueError(f"max_drop={max_drop} must be >= 0 (top-1 points)")
    device = example_input.device
    chans = example_input.shape[1] if example_input.ndim == 4 else None
    calib = calibration_batches(int8, chans) if int8 is not None else None
    val = calibration_batches(int8_val, chans, "int8_val") if int8_val is not None else None
    if candidates is None:
        candidates = [c for c in TORCH_CANDIDATES if compile or c not in SLOW_CANDIDATES]
        if device.type != "cpu":
            candidates = [c for c in candidates if c != "onednn_graph"]
        if runtimes:
            candidates += list(RUNTIME_CANDIDATES)
        if bf16:
            candidates += [c for c in BF16_CANDIDATES if compile or c not in SLOW_CANDIDATES]
        if calib is not None:
            candidates += list(INT8_CANDIDATES)
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    if calib is None and any(c in INT8_CANDIDATES for c in candidates):
        raise ValueError("an int8 candidate needs calibration images: pass int8=BATCHES")
    if any(c in BF16_CANDIDATES for c in candidates) and not bf16_supported(device):
        candidates = [c for c in candidates if c not in BF16_CANDIDATES]

    heap = retain_freed_memory() if retain_memory and device.type == "cpu" else "untouched"
    base = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference = base(example_input)
    fused = fuse(base)
    onnx_cache: list[bytes] = []

    def onnx() -> bytes:  # one export shared by the peer engines
        if not onnx_cache:
            onnx_cache.append(export_bytes(base, example_input))
        return onnx_cache[0]

    results: dict[str, CandidateResult] = {}
    runnable: dict[str, tuple[Callable, bool]] = {}
    for name in dict.fromkeys(["eager", *candidates]):
        res = results[name] = CandidateResult(name)
        res.skipped = _skip_reason(name, device, example_input)
        if res.skipped:
            continue
        start = time.perf_counter()
        try:
            if name in INT8_CANDIDATES:
                fn, any_shape = _int8_candidate(name, base, fused, example_input, calib, val, reference, max_drop,
                                                res), True
            else:
                fn, any_shape = make_candidate(name, fused, example_input, onnx, reference)
            if fn is None:  # refused by max_drop
                continue
            with torch.no_grad():
                out = fn(example_input)
        except Exception as e:  # a candidate that cannot run here is reported, never fatal
            if name == "eager":
                raise
            res.error = first_line(e, 200)
            continue
        res.setup_s = time.perf_counter() - start
        res.max_diff = max_difference(out, reference)
        if name in INT8_CANDIDATES:
            runnable[name] = (fn, any_shape)  # never exact: judged by its accuracy cost instead
            continue
        limit = max(tol, 5e-2) if name in BF16_CANDIDATES else tol
        res.exact = res.max_diff <= limit
        if res.exact:
            runnable[name] = (fn, any_shape)
    if "eager" not in runnable:
        raise ValueError(
            f"folding BatchNorm changed the output by {results['eager'].max_diff:.2e} (> tol={tol}); "
            "is the model in a state that eval mode cannot reproduce?"
        )

    if len(runnable) > 1:
        calls = {n: (lambda f=f: f(example_input)) for n, (f, _) in runnable.items()}
        with torch.no_grad():
            times = interleaved(calls, rounds, warmup, synchronizer(device),
                                progress="optimize_for_inference" if progress else None,
                                **pattern_options(pattern, calls, prime=example_input.shape[0] == 1))
        for n, t in times.items():
            results[n].latency = Timing.of(t)
        chosen = choose(times, SIMPLICITY)
        reason = choice_reason(chosen, times)
    else:
        chosen, reason = "eager", "the only candidate that ran"
    report = OptimizeReport(chosen, tol, tuple(example_input.shape), results, heap, pattern, reason)
    fn, any_shape = runnable[chosen]
    return OptimizedModel(fused, fn, report, example_input, any_shape)


def choice_reason(chosen: str, samples: dict[str, list[float]]) -> str:
    """What the choice rule (:func:`cspnet.inference.timing.choose`) did, in words (for the report)."""
    import statistics

    median = {n: statistics.median(v) for n, v in samples.items()}
    rounds = len(samples[chosen])
    fastest = min(median, key=median.get)

    def wins(a, b):
        return sum(x < y for x, y in zip(samples[a], samples[b], strict=True))

    if fastest == chosen:
        others = [n for n in samples if n != chosen]
        if not others:
            return "the only candidate timed"
        runner = min(others, key=median.get)
        return (f"fastest median, {(median[runner] - median[chosen]) * 1e3:.2f} ms ahead of {runner}, quicker in "
                f"{wins(chosen, runner)} of {rounds} rounds (each simpler candidate beaten in >= {WIN_SHARE:.0%})")
    return (f"simpler than the fastest median, {fastest} ({(median[chosen] - median[fastest]) * 1e3:.2f} ms "
            f"faster), which was quicker in only {wins(fastest, chosen)} of {rounds} rounds "
            f"(< {WIN_SHARE:.0%}: not a clear win)")
