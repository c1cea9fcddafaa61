"""When an eager-only inference shortcut may run.

Some layers have a faster eager form that is only valid without autograd (pre-allocated buffers
written in place, pooling by strided slices whose gradient would split ties differently). Tracers
(TorchScript, torch.compile, torch.export and the ONNX exporter built on it) get the plain form,
which they optimise themselves.
"""

from __future__ import annotations

import torch


def tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def eager_inference() -> bool:
    """No autograd and no tracer: the eager inference shortcuts apply."""
    return not torch.is_grad_enabled() and not tracing()
