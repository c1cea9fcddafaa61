"""int8 post-training quantization, and what it costs in accuracy.

The quantizer is ONNX Runtime's static quantization of the exported ONNX graph (QDQ format,
per-channel int8 weights, uint8 activations, min-max calibration on the caller's images); the
quantized graph runs in OpenVINO (``openvino`` backend: its CPU plugin turns the QDQ pairs into
AVX-512 VNNI / AMX int8 kernels) or in ONNX Runtime (``onnxruntime``). Chosen by measurement
(issue 16): on cspresnext50 at 224, batch 1, interleaved on this 2-core machine under heavy load from
other work, OpenVINO ran this QDQ graph at 0.38x its fp32 latency and NNCF's own quantization at
0.33x, but ONNX Runtime ran it at 0.94x; on a width-0.25 CSP model trained on the digits, NNCF's
quantization (either preset) lost 13 top-1 points where ONNX Runtime's lost 0.56, and OpenVINO running
that graph kept the 0.56. So one quantizer, no NNCF dependency, and the faster runtime where installed.

An int8 model is never called exact: its accuracy cost (:class:`Int8Accuracy`) is reported beside
it, and a caller's ``max_drop`` refuses it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import first_line
from .runtimes import missing

BACKENDS = ("openvino", "onnxruntime")
NEEDS = {"openvino": ("onnxruntime", "openvino"), "onnxruntime": ("onnxruntime",)}  # quantizer, runtime


def backend_missing(backend: str) -> str | None:
    """Why ``backend`` cannot quantize here, or None."""
    if backend not in BACKENDS:
        return f"unknown int8 backend {backend!r}; choose from {', '.join(BACKENDS)}"
    return next((r for r in map(missing, NEEDS[backend]) if r), None)


Batches = list[tuple[torch.Tensor, torch.Tensor | None]]


def calibration_batches(data, in_chans: int | None, what: str = "int8") -> Batches:
    """``data`` as a list of ``(images, labels or None)``: a tensor of images (N, C, H, W), or an
    iterable of tensors, ``(images, labels)`` pairs or loader batches (``{"inputs", "targets"}``).
    Empty data, or images of another channel count than the model's, is a one-line ValueError."""
    if isinstance(data, torch.Tensor):
        data = [data]
    if not isinstance(data, Iterable):
        raise ValueError(f"{what}: the calibration data must be image tensors or (images, labels) batches, "
                         f"got {type(data).__name__}")
    batches = []
    for item in data:
        if isinstance(item, dict):
            x, y = item.get("inputs"), item.get("targets")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
        else:
            x, y = item, None
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what}: a calibration batch must be an image tensor, got {type(x).__name__}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4:
            raise ValueError(f"{what}: calibration images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            continue
        if in_chans is not None and x.shape[1] != in_chans:
            raise ValueError(f"{what}: the calibration images have {x.shape[1]} channels; the model takes {in_chans}")
        batches.append((x.detach().float().cpu().contiguous(), None if y is None else torch.as_tensor(y)))
    if not batches:
        raise ValueError(f"{what}: the calibration data holds no images")
    return batches


def quantize_onnxruntime(onnx: bytes, batches: list[tuple[torch.Tensor, object]]) -> bytes:
    """The int8 (QDQ) ONNX graph of the (dynamic-batch) ``onnx``, calibrated on ``batches``."""
    import onnx as onnx_lib
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self._it = iter([{name: x.numpy()} for x, _ in batches])

        def get_next(self):
            return next(self._it, None)

    import logging

    proto = onnx_lib.load_from_string(onnx)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is printed on every call
    with tempfile.TemporaryDirectory(prefix="cspnet-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx)
        try:
            quantize_static(str(src), str(dst), Reader(proto.graph.input[0].name), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:
            raise ValueError(f"ONNX Runtime could not quantize the model: {first_line(e, 300)}") from None
        finally:
            root.setLevel(level)
        return dst.read_bytes()


@dataclass
class Int8Accuracy:
    """What int8 costs against fp32 on some images: top-1 of each (with labels), how often their
    top-1 classes agree, and the largest output difference (relative to the output scale)."""

    images: int
    max_diff: float
    agreement: float | None = None  # share of images whose top-1 class is the same in both
    top1_fp32: float | None = None
    top1_int8: float | None = None
    on: str = "validation data"

    @property
    def drop(self) -> float | None:
        """Top-1 points lost: fp32 - int8 with labels; without, the share of changed top-1 classes
        (every changed answer counted as a lost one: an upper bound)."""
        if self.top1_fp32 is not None and self.top1_int8 is not None:
            return 100.0 * (self.top1_fp32 - self.top1_int8)
        if self.agreement is not None:
            return 100.0 * (1.0 - self.agreement)
        return None

    def summary(self) -> str:
        parts = [f"int8 on {self.images} images of the {self.on}: max diff {self.max_diff:.2e}"]
        if self.top1_fp32 is not None:
            parts.append(f"top-1 fp32 {100 * self.top1_fp32:.2f}% -> int8 {100 * self.top1_int8:.2f}% "
                         f"({0.0 - self.drop:+.2f} points)")
        if self.agreement is not None:
            parts.append(f"same top-1 class on {100 * self.agreement:.1f}%")
        return ", ".join(parts)


def accuracy_cost(fp32, int8, batches: list[tuple[torch.Tensor, torch.Tensor | None]], on: str = "validation data"
                  ) -> Int8Accuracy:
    """Run both callables on every batch; top-1 figures where the output is one (N, classes) tensor."""
    from .compare import flatten_outputs, max_difference

    worst, n, same, right32, right8, labelled = 0.0, 0, 0, 0, 0, True
    classifier = True
    with torch.no_grad():
        for x, y in batches:
            a, b = fp32(x), int8(x)
            worst = max(worst, max_difference(b, a))
            fa, fb = flatten_outputs(a), flatten_outputs(b)
            n += x.shape[0]
            if len(fa) != 1 or fa[0].ndim != 2:
                classifier = False
                continue
            pa, pb = fa[0].argmax(1), fb[0].argmax(1)
            same += int((pa == pb).sum())
            if y is None:
                labelled = False
            else:
                right32 += int((pa == y).sum())
                right8 += int((pb == y).sum())
    if not classifier:
        return Int8Accuracy(n, worst, on=on)
    if not labelled:
        return Int8Accuracy(n, worst, same / n, on=on)
    return Int8Accuracy(n, worst, same / n, right32 / n, right8 / n, on=on)


def int8_model(backend: str, onnx: bytes, batches, template, threads: int | None = None):
    """``(torch callable, artifact)``: the ONNX graph ``onnx`` quantized (see the module docstring) and
    compiled for the CPU by ``backend``; the artifact is what to save (an ``openvino.Model`` of the
    quantized graph, or its ONNX bytes)."""
    from .runtimes import RuntimeModel, openvino_compiled, openvino_model, openvino_runner, ort_runner, ort_session

    reason = backend_missing(backend)
    if reason:
        raise ValueError(reason)
    quantized = quantize_onnxruntime(onnx, batches)
    if backend == "openvino":
        model = openvino_model(quantized)
        return RuntimeModel("int8_openvino", openvino_runner(openvino_compiled(model, threads)), template), model
    return RuntimeModel("int8_onnxruntime", ort_runner(ort_session(quantized, threads)), template), quantized


def load_calibration(spec: str, in_chans: int, img_size: int, calib_size: int = 300, preprocess: dict | None = None,
                     batch_size: int = 50) -> tuple[Batches, Batches]:
    """(calibration, validation) batches from a data SPEC (``cspnet train --data``): ``calib_size``
    images spread evenly over the train split (class folders are sorted: the first N would be one
    class), then the whole validation split with labels; both without augmentation, preprocessed as
    the model was trained (``preprocess`` from its checkpoint) at ``img_size``."""
    from torch.utils.data import DataLoader, Subset

    from ..data.classify import ClassifySamples, build_classify_data, collate

    if preprocess is not None:
        preprocess = {**preprocess, "img_size": img_size}
    data = build_classify_data(spec, img_size=img_size, in_chans=in_chans, preprocess=preprocess)
    train = ClassifySamples(data.train.source, data.val.transform, substitute=False)
    n = min(calib_size, len(train))
    picks = torch.linspace(0, len(train) - 1, n).round().long().unique().tolist()

    def batches(dataset):
        out = []
        for b in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            if b["inputs"].numel():
                out.append((b["inputs"], b["targets"]))
        return out

    return batches(Subset(train, picks)), batches(data.val)
