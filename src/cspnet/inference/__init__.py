"""Running a trained model fast and elsewhere: BatchNorm folding and CSP split rewrites
(:mod:`.fuse`), the fastest exact form on this machine (:mod:`.optimize`), ONNX Runtime and OpenVINO
as candidates (:mod:`.runtimes`), int8 with its accuracy cost (:mod:`.int8`), ONNX and OpenVINO IR
export checked in ONNX Runtime, OpenCV and OpenVINO (:mod:`.export`), glibc's heap settings
(:mod:`.heap`), fair interleaved timing and the choice rule (:mod:`.timing`) and output comparison
(:mod:`.compare`). It works on any module; what it
knows of cspnet's models is the stages (:class:`~cspnet.CrossStagePartial`) and the chain of feature
levels a model lists (``feature_levels()``)."""

from .compare import flatten_outputs, max_difference
from .export import ExportError, ExportResult, export_int8, export_onnx, export_openvino
from .fuse import fuse, merge_two_conv_splits, presplit_slices
from .heap import retain_freed_memory
from .optimize import OptimizedModel, OptimizeReport, optimize_for_inference
from .timing import Timing, interleaved

__all__ = [
    "ExportError",
    "ExportResult",
    "OptimizeReport",
    "OptimizedModel",
    "Timing",
    "export_int8",
    "export_onnx",
    "export_openvino",
    "flatten_outputs",
    "fuse",
    "interleaved",
    "max_difference",
    "merge_two_conv_splits",
    "optimize_for_inference",
    "presplit_slices",
    "retain_freed_memory",
]
