"""The engines a benchmark runs a model in, each as a zero-argument callable for one input.

    ``torch``        our default path, :func:`cspnet.optimize_for_inference` (its choice is noted)
    ``eager``        the plain model in eval mode, no rewrites
    ``compile``      BatchNorm folded + ``torch.compile`` with inductor freezing
    ``onednn_graph`` BatchNorm folded + a TorchScript trace fused by oneDNN Graph (CPU)
    ``onnxruntime``  the exported ONNX graph in ONNX Runtime (CPU execution provider)
    ``opencv``       the same graph in OpenCV DNN, as the paper's CPU table ran its models
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

ENGINES = ("torch", "eager", "compile", "onednn_graph", "onnxruntime", "opencv")
CANDIDATE_ENGINES = ("compile", "onednn_graph")  # one form of optimize_for_inference, forced
ONNX_ENGINES = ("onnxruntime", "opencv")
CPU_ONLY_ENGINES = (*ONNX_ENGINES, "onednn_graph")
ENGINE_MODULES = {"onnxruntime": "onnxruntime", "opencv": "cv2"}  # what an engine needs installed


def check_engine(engine: str, device: torch.device) -> None:
    """A one-line error for an unknown engine, one that cannot run on ``device`` or is not installed."""
    if engine not in ENGINES:
        raise OptionError(f"{{engine}} is unknown; choose from {', '.join(ENGINES)}", engine=engine)
    if engine in CPU_ONLY_ENGINES and device.type != "cpu":
        raise OptionError("{engine} runs on the CPU only; use {device}", engine=engine, device="cpu")
    module = ENGINE_MODULES.get(engine)
    if module:
        try:
            __import__(module)
        except ImportError:
            raise OptionError(f"{{engine}} needs {module}: pip install 'cspnet[export]'", engine=engine) from None


def onnx_file(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """``module`` exported (dynamic batch) to ``path``, once: engines reading ONNX share the file."""
    if not path.exists():
        path.write_bytes(to_onnx_bytes(prepare_for_export(module), x[:1], dynamic_batch=True))
    return path


def engine_callable(engine: str, module: nn.Module, x: torch.Tensor, onnx_path: Path, threads: int):
    """(zero-argument callable running ``x`` through the engine, one-time setup seconds, note)."""
    start = time.perf_counter()
    note = ""
    if engine == "eager":
        fn = partial(module, x)
    elif engine == "torch":
        fast = optimize_for_inference(module, x)
        fn = partial(fast, x)
        r = fast.report
        note = f"chose {r.chosen}"
        if "compile" in r.candidates and r.candidates["compile"].error is None:
            note += f" (compile {r.candidates['compile'].setup_s:.0f} s)"
    elif engine in CANDIDATE_ENGINES:
        compiled, _ = make_candidate(engine, fuse(copy.deepcopy(module)), x)
        fn = partial(compiled, x)
    elif engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # ORT's pool threads otherwise spin-wait after each run and steal the cores from whatever is
        # timed next: interleaved, that made torch look 2-3x slower than it is
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(onnx_file(module, x, onnx_path)), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.cpu().numpy()}
        fn = lambda: sess.run(None, feed)[0]  # noqa: E731
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
