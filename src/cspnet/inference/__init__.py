"""Running a trained model fast and elsewhere: BatchNorm folding and CSP split rewrites
(:mod:`.fuse`), the fastest exact form on this machine (:mod:`.optimize`), ONNX export checked in
ONNX Runtime and OpenCV (:mod:`.export`), glibc's heap settings (:mod:`.heap`), fair interleaved
timing (:mod:`.timing`) and output comparison (:mod:`.compare`). It works on any module; what it
knows of cspnet's models is the stages (:class:`~cspnet.CrossStagePartial`) and the chain of feature
levels a model lists (``feature_levels()``)."""

from .compare import flatten_outputs, max_difference
from .export import ExportError, ExportResult, export_onnx
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
    "export_onnx",
    "flatten_outputs",
    "fuse",
    "interleaved",
    "max_difference",
    "merge_two_conv_splits",
    "optimize_for_inference",
    "presplit_slices",
    "retain_freed_memory",
]
