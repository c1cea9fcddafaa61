"""ONNX and OpenVINO IR export, checked in ONNX Runtime, OpenCV DNN and OpenVINO right after it is written.

The model is exported as one self-contained ``.onnx`` file (weights inside) by PyTorch's
``torch.export``-based exporter, after the exact inference rewrites both engines benefit from:
BatchNorm folded into convolutions, dense blocks traced as plain concatenations (not their
in-place buffer writes), and Mish written as ``x * tanh(softplus(x))`` (Softplus, Tanh, Mul), the
form OpenCV DNN 4.x fuses into its Mish layer; the ONNX ``Mish`` operator (opset 18) is missing
from older OpenCV builds.

The OpenVINO IR (``.xml`` + ``.bin``) is OpenVINO's reading of that same ONNX graph, saved with fp32
weights (OpenVINO's ``save_model`` would compress them to fp16 by default) and checked in OpenVINO
against PyTorch. ``--int8`` files (:func:`export_int8`) are quantized by the engine's own
quantizer (:mod:`.int8`) and reported with their accuracy cost instead of a tolerance.

Nothing here is specific to classifiers: any module whose outputs are tensors (or lists, tuples,
dicts of them, a detector's boxes, scores and classes) exports and is checked the same way.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_write_bytes
from ..errors import first_line
from .compare import flatten_outputs, max_difference
from .fuse import fuse

MIN_OPSET, MAX_OPSET = 18, 23  # the torch.export-based exporter writes opset 18 and newer
DEFAULT_OPSET = 18
ENGINES = ("onnxruntime", "opencv")


class ExportError(ValueError):
    """An export that cannot be written, or whose check failed."""


class MishExplicit(nn.Module):
    """Mish as ``x * tanh(softplus(x))``: the same values, exported as Softplus/Tanh/Mul."""

    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in the form the exporter should trace (eval, BN folded, dense blocks as
    concatenations, Mish decomposed); ``model`` is left as it was."""
    model = fuse(copy.deepcopy(model).eval())
    for module in model.modules():
        if hasattr(module, "use_buffer"):
            module.use_buffer = False
        for name, child in module.named_children():
            if isinstance(child, nn.Mish):
                setattr(module, name, MishExplicit())
    return model


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
            f"(PyTorch's exporter writes opset {MIN_OPSET} and newer)"
        )
    return opset


def check_output_path(path: str | os.PathLike, suffix: str = ".onnx") -> Path:
    """Fail before any work if ``path`` cannot be written: a missing or read-only directory."""
    path = Path(path)
    if path.suffix != suffix:
        raise ExportError(f"{path}: the output must end in {suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"{path}: directory {parent} does not exist; create it or write elsewhere")
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; give a file name ending in {suffix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise ExportError(f"{path}: cannot write in directory {parent} ({e.strerror or e}); "
                          "write elsewhere") from None
    os.close(fd)
    os.unlink(probe)
    return path


@dataclass
class EngineCheck:
    engine: str
    max_abs_diff: float | None = None
    rel_diff: float | None = None  # max_abs_diff / max(1, max |reference|)
    error: str | None = None

    def ok(self, tol: float) -> bool:
        return self.error is None and self.rel_diff is not None and self.rel_diff <= tol


@dataclass
class ExportResult:
    path: Path
    opset: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    tol: float
    checks: list[EngineCheck] = field(default_factory=list)
    accuracy: object = None  # an int8 export's int8.Int8Accuracy: judged by it, never by tol

    @property
    def files(self) -> list[Path]:
        """What was written: the file, and an OpenVINO IR's weights beside it."""
        return [self.path] + ([self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [])

    @property
    def ok(self) -> bool:
        if self.accuracy is not None:
            return all(c.error is None for c in self.checks)
        return all(c.ok(self.tol) for c in self.checks)

    def summary(self) -> str:
        size = sum(p.stat().st_size for p in self.files if p.exists()) / 2**20
        kind = "int8, " if self.accuracy is not None else ""
        lines = [f"wrote {self.path} ({size:.1f} MiB, {kind}opset {self.opset}, input {tuple(self.input_shape)}"
                 f"{', dynamic batch' if self.dynamic_batch else ''})"]
        for c in self.checks:
            if c.error:
                lines.append(f"  {c.engine:<12} FAILED: {c.error}")
            else:
                if self.accuracy is not None:
                    verdict = "runs (int8: never exact)"
                else:
                    verdict = "ok" if c.ok(self.tol) else f"FAILED (> {self.tol:g})"
                lines.append(f"  {c.engine:<12} max abs diff vs PyTorch {c.max_abs_diff:.2e} "
                             f"(relative to output scale {c.rel_diff:.2e})  {verdict}")
        if self.accuracy is not None:
            lines.append(f"  {self.accuracy.summary()}")
        return "\n".join(lines)


def to_onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = False, input_names=("input",), output_names=None,
                  custom_translation_table=None) -> bytes:
    """Serialized ONNX of an already prepared module (see :func:`prepare_for_export`);
    ``custom_translation_table`` maps custom ops to their ONNX (a detector's in-graph NMS)."""
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    quiet = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, external_data=False,
                input_names=list(input_names), output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes, optimize=True, custom_translation_table=custom_translation_table,
            )
    except Exception as e:
        raise ExportError(f"PyTorch could not export the model to ONNX: {first_line(e, 300)}") from None
    finally:
        logger.setLevel(level)
    proto = program.model_proto
    if proto.opset_import and all(o.version != opset for o in proto.opset_import if o.domain in ("", "ai.onnx")):
        raise ExportError(f"the exporter wrote opset {[o.version for o in proto.opset_import]}, not {opset}")
    return proto.SerializeToString()


def simplify_onnx(data: bytes) -> bytes:
    """Constant folding and graph clean-up by onnxslim (the ``export`` extra)."""
    try:
        import onnx
        import onnxslim
    except ImportError:
        raise ExportError("simplifying needs onnxslim: pip install 'cspnet[export]'") from None
    try:
        slim = onnxslim.slim(onnx.load_from_string(data))
    except Exception as e:
        raise ExportError(f"onnxslim could not simplify the model: {first_line(e, 300)}") from None
    return slim.SerializeToString()


def run_onnxruntime(path, inputs: list[torch.Tensor]) -> list:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs[0].numpy()})


def run_opencv(path, inputs: list[torch.Tensor]) -> list:
    import cv2
    import onnx

    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(inputs[0].numpy())
    return list(net.forward(names))


def run_openvino(path, inputs: list[torch.Tensor]) -> list:
    from .runtimes import openvino_compiled, openvino_runner

    return openvino_runner(openvino_compiled(str(path)))(inputs[0].numpy())


RUNNERS = {"onnxruntime": run_onnxruntime, "opencv": run_opencv, "openvino": run_openvino}


def check_onnx(path, model: nn.Module, inputs: list[torch.Tensor], engines=ENGINES) -> list[EngineCheck]:
    """Run the file in each engine on each input; compare with ``model`` (eager PyTorch)."""
    checks = []
    with torch.no_grad():
        refs = [model(x) for x in inputs]
    for engine in engines:
        check = EngineCheck(engine)
        checks.append(check)
        try:
            worst_abs = worst_rel = 0.0
            for x, ref in zip(inputs, refs, strict=True):
                outs = [torch.as_tensor(o) for o in RUNNERS[engine](path, [x])]
                expected = flatten_outputs(ref)
                if len(outs) != len(expected):
                    raise ExportError(f"{len(outs)} outputs, PyTorch gives {len(expected)}")
                outs = [o.reshape(e.shape) if o.numel() == e.numel() else o for o, e in zip(outs, expected,
                                                                                              strict=True)]
                rel = max_difference(outs, expected)
                if rel == float("inf"):
                    shapes = [tuple(o.shape) for o in outs]
                    raise ExportError(f"output shapes {shapes} differ from PyTorch's "
                                      f"{[tuple(e.shape) for e in expected]}")
                worst_rel = max(worst_rel, rel)
                worst_abs = max(worst_abs, max((o.float() - e.float()).abs().max().item()
                                               for o, e in zip(outs, expected, strict=True)))
            check.max_abs_diff, check.rel_diff = worst_abs, worst_rel
        except Exception as e:  # any engine failure is reported, and fails the export
            check.error = first_line(e, 300)
    return checks


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    simplify: bool = False,
    input_names=("input",),
    output_names=None,
    engines=ENGINES,
    tol: float = 1e-3,
) -> ExportResult:
    """Write ``model`` as a single-file ONNX graph at ``path`` (atomically) and check it.

    Every engine in ``engines`` runs the file on ``example_input`` (and, with
    ``dynamic_batch``, on a batch one larger); ``result.ok`` is False when an engine fails or
    differs from PyTorch by more than ``tol`` (relative to the output scale where that exceeds
    1). The file is kept either way, so a failing export can be inspected.
    """
    check_opset(opset)
    path = check_output_path(path)
    prepared = prepare_for_export(model)
    data = to_onnx_bytes(prepared, example_input, opset, dynamic_batch, input_names, output_names)
    if simplify:
        data = simplify_onnx(data)
    atomic_write_bytes(path, data)
    inputs = [example_input]
    if dynamic_batch:
        inputs.append(torch.randn(example_input.shape[0] + 1, *example_input.shape[1:],
                                  generator=torch.Generator().manual_seed(1)))
    reference = copy.deepcopy(model).eval()
    result = ExportResult(path, opset, tuple(example_input.shape), dynamic_batch, tol)
    result.checks = check_onnx(path, reference, inputs, engines)
    return result


def _check_inputs(example_input: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    inputs = [example_input]
    if dynamic_batch:
        inputs.append(torch.randn(example_input.shape[0] + 1, *example_input.shape[1:],
                                  generator=torch.Generator().manual_seed(1)))
    return inputs


def save_openvino(ov_model, path: Path) -> None:
    """``ov_model`` as ``path`` (.xml) and its .bin, fp32 weights kept; each file replaced atomically
    (written beside it under a temporary name first)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp:
        tmp_xml = Path(tmp) / path.name
        try:
            ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
        except Exception as e:
            raise ExportError(f"OpenVINO could not save the model: {first_line(e, 300)}") from None
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)


def export_openvino(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    tol: float = 1e-3,
) -> ExportResult:
    """Write ``model`` as an OpenVINO IR at ``path`` (.xml, with its .bin) and check it in OpenVINO
    against PyTorch, as :func:`export_onnx` checks an ONNX file."""
    from .runtimes import missing, openvino_model

    reason = missing("openvino")
    if reason:
        raise ExportError(f"--format openvino: {reason}")
    check_opset(opset)
    path = check_output_path(path, ".xml")
    data = to_onnx_bytes(prepare_for_export(model), example_input, opset, dynamic_batch)
    save_openvino(openvino_model(data), path)
    result = ExportResult(path, opset, tuple(example_input.shape), dynamic_batch, tol)
    result.checks = check_onnx(path, copy.deepcopy(model).eval(), _check_inputs(example_input, dynamic_batch),
                               ("openvino",))
    return result


INT8_FORMATS = {"onnx": ("onnxruntime", ".onnx"), "openvino": ("openvino", ".xml")}  # backend, suffix


def export_int8(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    calibration,
    validation,
    *,
    fmt: str = "openvino",
    max_drop: float | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """An int8 file of ``model`` (dynamic batch): ONNX (QDQ, ONNX Runtime's static quantization) or
    OpenVINO IR of that quantized graph, calibrated on ``calibration`` and judged on ``validation`` (image batches,
    with labels for top-1; see :func:`.int8.calibration_batches`). A top-1 drop over ``max_drop``
    points is an :class:`ExportError` and nothing is written."""
    from .int8 import accuracy_cost, backend_missing, calibration_batches, int8_model

    if fmt not in INT8_FORMATS:
        raise ExportError(f"int8 export writes {' or '.join(INT8_FORMATS)}, not {fmt}")
    backend, suffix = INT8_FORMATS[fmt]
    reason = backend_missing(backend)
    if reason:
        raise ExportError(f"--int8 --format {fmt}: {reason}")
    check_opset(opset)
    path = check_output_path(path, suffix)
    chans = example_input.shape[1]
    calib = calibration_batches(calibration, chans, "--calib-data")
    val = calibration_batches(validation, chans, "--calib-data (validation split)")
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        template = reference(example_input)
    data = to_onnx_bytes(prepare_for_export(model), example_input[:1], opset, dynamic_batch=True)
    fn, artifact = int8_model(backend, data, calib, template)
    accuracy = accuracy_cost(reference, fn, val)
    drop = accuracy.drop
    if max_drop is not None and drop is not None and drop > max_drop:
        raise ExportError(f"int8 loses {drop:.2f} top-1 points on {accuracy.images} validation images "
                          f"(> --max-drop {max_drop:g}); nothing written: export fp32, or calibrate on more data")
    if fmt == "onnx":
        atomic_write_bytes(path, artifact)
    else:
        save_openvino(artifact, path)
    result = ExportResult(path, opset, tuple(example_input.shape), True, 0.0, accuracy=accuracy)
    result.checks = check_onnx(path, reference, _check_inputs(example_input, True), (backend,))
    return result
