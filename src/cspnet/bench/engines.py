"""The engines a benchmark runs a model in, each as a zero-argument callable for one input.

    ``torch``        our default path, :func:`cspnet.optimize_for_inference` (its choice is noted)
    ``eager``        the plain model in eval mode, no rewrites
    ``compile``      BatchNorm folded + ``torch.compile`` with inductor freezing
    ``onednn_graph`` BatchNorm folded + a TorchScript trace fused by oneDNN Graph (CPU)
    ``onnxruntime``  the exported ONNX graph in ONNX Runtime (CPU execution provider)
    ``openvino``     the same graph in OpenVINO (CPU plugin, f32, latency hint)
    ``opencv``       the same graph in OpenCV DNN, as the paper's CPU table ran its models
    ``int8``         the graph quantized to int8 by ONNX Runtime's static quantization, run in
                     OpenVINO (in ONNX Runtime where OpenVINO is missing); calibrated on the
                     ``calibration`` images given, else on random ones (then only its time is meaningful)

ONNX Runtime and OpenVINO are set up exactly as the candidates of ``optimize_for_inference``
(:mod:`cspnet.inference.runtimes`), so a peer engine here is what our default path races against.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import OptionError
from ..inference.export import prepare_for_export, to_onnx_bytes
from ..inference.fuse import fuse
from ..inference.optimize import make_candidate, optimize_for_inference

ENGINES = ("torch", "eager", "compile", "onednn_graph", "onnxruntime", "openvino", "opencv", "int8")
CANDIDATE_ENGINES = ("compile", "onednn_graph")  # one form of optimize_for_inference, forced
ONNX_ENGINES = ("onnxruntime", "openvino", "opencv", "int8")
CPU_ONLY_ENGINES = (*ONNX_ENGINES, "onednn_graph")
ENGINE_MODULES = {"onnxruntime": ("onnxruntime", "export"), "opencv": ("cv2", "export"),
                  "openvino": ("openvino", "inference")}  # what an engine needs installed, and its extra
RANDOM_CALIBRATION = 32  # random images the int8 engine calibrates on when given none


def int8_backend() -> str | None:
    """The int8 engine's runtime here: OpenVINO, else ONNX Runtime; None when neither is installed."""
    from ..inference.int8 import BACKENDS, backend_missing

    return next((b for b in BACKENDS if backend_missing(b) is None), None)


def check_engine(engine: str, device: torch.device) -> None:
    """A one-line error for an unknown engine, one that cannot run on ``device`` or is not installed."""
    if engine not in ENGINES:
        raise OptionError(f"{{engine}} is unknown; choose from {', '.join(ENGINES)}", engine=engine)
    if engine in CPU_ONLY_ENGINES and device.type != "cpu":
        raise OptionError("{engine} runs on the CPU only; use {device}", engine=engine, device="cpu")
    if engine == "int8" and int8_backend() is None:
        raise OptionError("{engine} needs onnxruntime (and openvino to run fastest): pip install 'cspnet[inference]'",
                          engine=engine)
    module, extra = ENGINE_MODULES.get(engine, (None, None))
    if module:
        try:
            __import__(module)
        except ImportError:
            raise OptionError(f"{{engine}} needs {module}: pip install 'cspnet[{extra}]'", engine=engine) from None


def onnx_file(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """``module`` exported for ``x``'s shape (as the default path's candidates are: a static shape
    is what these engines run fastest), once per batch size: engines reading ONNX share the file."""
    path = path.with_name(f"{path.stem}_b{x.shape[0]}{path.suffix}")
    if not path.exists():
        path.write_bytes(to_onnx_bytes(prepare_for_export(module), x))
    return path


def int8_callable(module: nn.Module, x: torch.Tensor, onnx_path: Path, threads: int, calibration=None):
    """(callable, note): ``module``'s int8 form (see the module docstring) run on ``x``."""
    from ..inference.int8 import calibration_batches, int8_model

    backend = int8_backend()
    random_calib = calibration is None
    if isinstance(calibration, str):  # a data SPEC: its train split at this input's size
        from ..inference.int8 import load_calibration

        calibration = load_calibration(calibration, x.shape[1], x.shape[-1])[0]
    if random_calib:
        calibration = torch.randn(RANDOM_CALIBRATION, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    images = torch.cat([b for b, _ in calibration_batches(calibration, x.shape[1])])
    n = x.shape[0]  # the graph has x's static shape: calibrate in batches of that size
    if images.shape[0] < n:
        raise ValueError(f"int8: {images.shape[0]} calibration images, fewer than the batch of {n}")
    batches = [(images[i:i + n], None) for i in range(0, images.shape[0] - n + 1, n)]
    with torch.no_grad():
        template = module(x[:1])
    fn, _ = int8_model(backend, onnx_file(module, x, onnx_path).read_bytes(), batches, template, threads)
    note = f"{backend} int8" + (", calibrated on random images: time only" if random_calib else "")
    return partial(fn, x), note


def engine_callable(engine: str, module: nn.Module, x: torch.Tensor, onnx_path: Path, threads: int,
                    pattern: str = "loop", calibration=None):
    """(zero-argument callable running ``x`` through the engine, one-time setup seconds, note).
    ``pattern`` is the call pattern our default path optimizes for; ``calibration`` the int8
    engine's images."""
    from ..inference.runtimes import RuntimeModel, openvino_compiled, openvino_runner, ort_runner, ort_session

    start = time.perf_counter()
    note = ""
    if engine == "eager":
        fn = partial(module, x)
    elif engine == "torch":
        fast = optimize_for_inference(module, x, pattern=pattern)
        fn = partial(fast, x)
        r = fast.report
        note = f"chose {r.chosen}"
        if "compile" in r.candidates and r.candidates["compile"].error is None:
            note += f" (compile {r.candidates['compile'].setup_s:.0f} s)"
    elif engine in CANDIDATE_ENGINES:
        compiled, _ = make_candidate(engine, fuse(copy.deepcopy(module)), x)
        fn = partial(compiled, x)
    elif engine == "onnxruntime":
        sess = ort_session(str(onnx_file(module, x, onnx_path)), threads)
        fn = partial(RuntimeModel(engine, ort_runner(sess), None), x)
    elif engine == "openvino":
        compiled = openvino_compiled(str(onnx_file(module, x, onnx_path)), threads)
        fn = partial(RuntimeModel(engine, openvino_runner(compiled), None), x)
    elif engine == "int8":
        fn, note = int8_callable(module, x, onnx_path, threads, calibration)
    elif engine == "opencv":
        import cv2

        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(str(onnx_file(module, x, onnx_path)))
        fn = opencv_callable(net, x)
    else:
        check_engine(engine, x.device)
    return fn, time.perf_counter() - start, note


def opencv_callable(net, x: torch.Tensor) -> Callable[[], object]:
    """An OpenCV DNN network run on ``x``, computing every output (a detector's heads too: a plain
    ``forward()`` would compute only the first); returns the first."""
    xn, names = x.cpu().numpy(), net.getUnconnectedOutLayersNames()

    def fn():
        net.setInput(xn)
        return net.forward(names)[0]

    return fn


def train_step_callable(module: nn.Module, x: torch.Tensor, num_classes: int) -> Callable[[], None]:
    """One SGD step of a copy of ``module`` on ``x`` with random targets (gradients enabled)."""
    model = copy.deepcopy(module).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, max(1, num_classes), (x.shape[0],), device=x.device)

    def step():
        with torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            out = model(x)
            torch.nn.functional.cross_entropy(out, target).backward()
            opt.step()

    return step


def matmul_callable(device: torch.device, n: int = 2048) -> tuple[Callable[[], object], float]:
    """An ``n`` x ``n`` fp32 matmul and its FLOPs: the machine's peak, timed beside the models."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.mm(a, b)), 2.0 * n**3
