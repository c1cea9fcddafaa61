"""Activation memory of a forward pass, to test the paper's claim that Maxout cuts the memory of
generating the EFM feature pyramid by 75% (arch. 5.6).

What is measured (on any device, no allocator hooks): every tensor an aten operator returns during
the call, counted once per storage, excluding the inputs', parameters' and buffers' storages. A
storage counts from the operator that creates it until the last tensor viewing it is freed, so
``peak_bytes`` is the most bytes of such tensors alive at one time (the outputs included), and
``total_bytes`` the bytes of every storage created. The forward runs under ``no_grad`` (inference:
nothing is kept for a backward); an operator's internal scratch space is not seen.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class ActivationMemory:
    peak_bytes: int  # most bytes of created tensors alive at once
    total_bytes: int  # bytes of every storage created


class _Tracker(TorchDispatchMode):
    """Counts the storages of operator outputs while they are alive (a weakref per tensor)."""

    def __init__(self, external: set[int]):
        super().__init__()
        self.external = external
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive]
        self.current = self.peak = self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.external or storage.nbytes() == 0:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.total += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key, entry)

    def _release(self, key: int, entry: list[int]) -> None:
        entry[1] -= 1
        if entry[1] == 0 and self.live.get(key) is entry:
            del self.live[key]
            self.current -= entry[0]


def _storages(objs) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tree_leaves(objs) if isinstance(t, torch.Tensor)}


def activation_memory(fn: Callable, *inputs) -> ActivationMemory:
    """The memory of the tensors ``fn(*inputs)`` creates (see the module docstring). ``fn`` may be a
    module or a bound method such as ``neck.pyramid``; its parameters are excluded when it is one."""
    if any(t.is_meta for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)):
        raise ValueError("activation_memory needs real tensors (cpu or cuda), not the meta device")
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    external = _storages(inputs)
    if isinstance(owner, nn.Module):
        external |= _storages([*owner.parameters(), *owner.buffers()])
    tracker = _Tracker(external)
    with torch.no_grad(), tracker:
        out = fn(*inputs)
    del out
    return ActivationMemory(tracker.peak, tracker.total)


@dataclass(frozen=True)
class MaxoutSaving:
    """The neck's memory with its Maxout and with ``maxout=1`` (none): the whole neck's forward and
    the fused pyramid alone (``neck.pyramid``: compression, resampling and routes, no conv stacks)."""

    neck: tuple[ActivationMemory, ActivationMemory]
    pyramid: tuple[ActivationMemory, ActivationMemory]

    def ratio(self, part: str = "pyramid", measure: str = "peak_bytes") -> float:
        """With / without Maxout (the paper's -75% is a ratio of 0.25)."""
        with_, without = getattr(self, part)
        return getattr(with_, measure) / getattr(without, measure)


def maxout_saving(name: str, img_size: int = 320, batch: int = 1, seed: int = 0, **overrides) -> MaxoutSaving:
    """Build the EFM/GFM detector ``name`` with its Maxout and without, and measure both necks on the
    same random backbone features of a ``batch`` of ``img_size`` images (the neck's memory does not
    depend on the feature values; the backbone is not run)."""
    from ..models import create_model

    models = [create_model(name, **overrides), create_model(name, **{**overrides, "maxout": 1})]
    fusions = [getattr(m.neck, "base", m.neck) for m in models]  # under an AttentionNeck, if any
    if not all(hasattr(f, "pyramid") for f in fusions):
        raise ValueError(f"{name} has no Maxout fusion neck (its neck must be efm or gfm)")
    if fusions[0].maxout == 1:
        raise ValueError(f"{name} already runs without Maxout (maxout=1); nothing to compare")
    with torch.device("meta"):
        shapes = [f.shape for f in create_model(name, **overrides).backbone(
            torch.empty(1, models[0].in_chans or 3, img_size, img_size))]
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, *s[1:], generator=gen) for s in shapes]
    for m in models:
        m.eval()
    return MaxoutSaving(tuple(activation_memory(m.neck, feats) for m in models),
                        tuple(activation_memory(f.pyramid, feats) for f in fusions))
