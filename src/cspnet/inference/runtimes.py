"""ONNX Runtime and OpenVINO as inference candidates: the model exported as ``cspnet export`` writes
it, run in the peer engine, wrapped so the caller still passes and gets torch tensors.

Each engine is set up the way it runs fastest on its own, and the settings are applied here, by
the candidate (nothing is process-wide):

- ONNX Runtime: ``intra_op_num_threads`` = torch's thread count, full graph optimisation, and its
  pool threads' spin-waiting left on (its default: a thread that spins between ops and between
  calls in a loop is ready at once; the timing loop's pause before each timed call lets the spin
  end, so it never steals cores from the next candidate).
- OpenVINO: the ``LATENCY`` performance hint (one stream using every thread: one request at a
  time), ``INFERENCE_NUM_THREADS`` = torch's thread count and ``INFERENCE_PRECISION_HINT=f32``: on
  CPUs with bf16 units OpenVINO otherwise computes in bf16, which is not exact.

Both are optional (the ``inference`` extra); :func:`missing` says what to install.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

from ..errors import first_line

RUNTIMES = ("onnxruntime", "openvino")
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
INSTALL = "pip install 'cspnet[inference]'"


def missing(name: str) -> str | None:
    """Why ``name`` (an engine or library) cannot be used here, or None when it can."""
    module = MODULES.get(name, name)
    try:
        __import__(module)
    except ImportError:
        return f"{name} is not installed: {INSTALL}"
    return None


def restructure(template, flat: list[torch.Tensor]):
    """``flat`` (an engine's outputs, in order) in the nesting of ``template`` (the PyTorch model's
    output: a tensor, or lists, tuples and dicts of them)."""
    it = iter(flat)

    def build(t):
        if isinstance(t, torch.Tensor):
            return next(it)
        if isinstance(t, dict):
            return {k: build(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(build(v) for v in t)
        return t

    out = build(template)
    if next(it, None) is not None:
        raise ValueError("the engine returned more outputs than the PyTorch model")
    return out


class RuntimeModel:
    """A peer engine's compiled model as a torch callable: a CPU float tensor in, PyTorch's output
    structure of tensors out (the engine's arrays, not copied again; the first output alone where
    ``template`` is None)."""

    def __init__(self, engine: str, run: Callable[[np.ndarray], list[np.ndarray]], template):
        self.engine, self._run, self._template = engine, run, template

    def __call__(self, x: torch.Tensor):
        arrays = self._run(np.ascontiguousarray(x.detach().cpu().numpy()))
        if self._template is None:
            return torch.from_numpy(np.asarray(arrays[0]))
        return restructure(self._template, [torch.from_numpy(np.asarray(a)) for a in arrays])

    def __repr__(self) -> str:
        return f"RuntimeModel({self.engine})"


def ort_session(onnx: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session of ``onnx`` (bytes or a path), set up as the module docstring says."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's messages are long multi-line C++ traces
        raise ValueError(f"ONNX Runtime refused the model: {first_line(e, 300)}") from None


def ort_runner(session) -> Callable[[np.ndarray], list[np.ndarray]]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_model(onnx: bytes | str):
    """The ONNX graph (bytes or a path) read by OpenVINO: an ``openvino.Model``."""
    import openvino as ov

    try:
        return ov.convert_model(io.BytesIO(onnx) if isinstance(onnx, bytes) else str(onnx))
    except Exception as e:
        raise ValueError(f"OpenVINO refused the model: {first_line(e, 300)}") from None


OPENVINO_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def openvino_compiled(model, threads: int | None = None):
    """``model`` (an ``openvino.Model``, or the path of an IR or ONNX file) compiled for the CPU."""
    import openvino as ov

    config = {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    try:
        return ov.Core().compile_model(model if not isinstance(model, (str, bytes)) else str(model), "CPU", config)
    except Exception as e:
        raise ValueError(f"OpenVINO refused the model: {first_line(e, 300)}") from None


def openvino_runner(compiled) -> Callable[[np.ndarray], list[np.ndarray]]:
    request = compiled.create_infer_request()

    def run(x):
        # share_inputs: no copy of x in; outputs are copied out (the request's buffers are reused)
        return list(request.infer({0: x}, share_inputs=True).values())

    return run


def runtime_model(engine: str, onnx: bytes, template, threads: int | None = None) -> RuntimeModel:
    """``engine``'s compiled form of the ONNX graph ``onnx``, as a torch callable."""
    reason = missing(engine)
    if reason:
        raise ValueError(reason)
    if engine == "onnxruntime":
        return RuntimeModel(engine, ort_runner(ort_session(onnx, threads)), template)
    if engine == "openvino":
        return RuntimeModel(engine, openvino_runner(openvino_compiled(openvino_model(onnx), threads)), template)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(RUNTIMES)}")
