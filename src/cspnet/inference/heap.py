"""Keep freed memory in the process, so a forward pass does not page-fault its activations back in.

glibc's malloc hands the top of its heap back to the kernel once more than ``M_TRIM_THRESHOLD`` of
it is free, and serves blocks over ``M_MMAP_THRESHOLD`` with fresh mappings that are unmapped on
free. Both start at 128 KiB and grow only with the largest block freed so far. With a small model
at batch 1 (PeleeNet at 224: no activation over 1.5 MiB) the heap can still be trimmed after every
forward, and the next forward touches fresh pages again: ``benchmarks/heap.md`` has peleenet's
oneDNN Graph form at 954 page faults and 2.1 ms of kernel time per call with glibc's defaults, none
and 0.08 ms with the settings below. Whether it happens depends on what the process allocated
before (a torch.compile run raises the thresholds on its own). ONNX Runtime never pays this: it
keeps its own arena.

The settings are process-wide, which is why they are set by the inference entry points
(:func:`cspnet.optimize_for_inference`, ``cspnet predict`` and ``cspnet bench``) and not on import,
and why they are left alone when the user chose malloc settings of their own (``MALLOC_*_``
variables, ``GLIBC_TUNABLES``). The cost: up to ``TRIM_THRESHOLD`` of freed memory stays with the
process instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # trim only when over 1 GiB of the heap top is free
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES")

_state: str | None = None  # what retain_freed_memory did, once it ran


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded in this process
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None  # musl and others: their mallopt (if any) means something else
    return libc


def retain_freed_memory() -> str:
    """Raise glibc's trim and mmap thresholds for this process (once); returns what happened:
    ``"retained"``, ``"user settings"`` (left alone), ``"not glibc"`` or ``"refused"`` (by mallopt)."""
    global _state
    if _state is not None:
        return _state
    if any(k in os.environ for k in USER_SETTINGS):
        _state = "user settings"
        return _state
    libc = _glibc()
    if libc is None:
        _state = "not glibc"
        return _state
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _state = "retained" if ok else "refused"
    return _state
