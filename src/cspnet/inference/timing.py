"""Latency measurement that is fair under a noisy, shared machine.

Candidates are timed round by round in a freshly shuffled order, so a burst of load from another
process hits every candidate alike instead of whichever happened to run then.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median (the figure to quote), the minimum (the machine's best) and
    the spread (interquartile range) that says how much to trust the median."""

    median: float
    min: float
    spread: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        if not seconds:
            raise ValueError("no timed runs")
        if len(seconds) >= 4:
            q = statistics.quantiles(seconds, n=4)
            spread = q[2] - q[0]
        else:
            spread = max(seconds) - min(seconds)
        return cls(statistics.median(seconds), min(seconds), spread, len(seconds))


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What to call before reading the clock so that queued device work is counted."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
    progress: str | None = None,
    seed: int = 0,
    pause: float = 0.0,
    primed: Collection[str] = (),
) -> dict[str, list[float]]:
    """Time every ``fns[name]()`` ``rounds`` times, interleaved and shuffled; seconds per call.

    ``warmup`` untimed calls of each come first (allocator, caches, lazy compilation).
    ``progress`` names a tqdm bar (None: no bar). ``pause`` seconds of sleep before each timed
    call let the previous engine's worker threads stop spinning (OpenMP, ONNX Runtime and OpenCV
    pools busy-wait for a while after each call), so they do not steal cores from the next one.
    Each name in ``primed`` gets one untimed call right before its timed one, so a short call is
    timed as in a loop of its own (its weights in the CPU caches), not cold after the others.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync()
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    steps = range(rounds)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=progress, unit="round", leave=False)
    for _ in steps:
        rng.shuffle(order)
        for name in order:
            sync()
            if pause:
                time.sleep(pause)
            if name in primed:
                fns[name]()
                sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times
