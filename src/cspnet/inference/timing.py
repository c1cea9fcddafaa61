"""Latency measurement that is fair under a noisy, shared machine, and the rule that picks a winner.

Candidates are timed round by round in a freshly shuffled order, so a burst of load from another
process hits every candidate alike instead of whichever happened to run then. Two call patterns:
``loop`` (each timed call right after an untimed call of its own, as in a tight loop over batches)
and ``sporadic`` (each timed call after :data:`SPORADIC_IDLE_S` of idle time, as a camera frame or
a request every few tens of milliseconds: thread pools have gone to sleep and the caches hold
whatever ran before). :func:`choose` is a pure function of the measured times.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Collection, Sequence
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
    clock: Callable[[], float] | None = None,
) -> dict[str, list[float]]:
    """Time every ``fns[name]()`` ``rounds`` times, interleaved and shuffled; seconds per call.

    ``warmup`` untimed calls of each come first (allocator, caches, lazy compilation).
    ``progress`` names a tqdm bar (None: no bar). ``pause`` seconds of sleep before each timed
    call let the previous engine's worker threads stop spinning (OpenMP, ONNX Runtime and OpenCV
    pools busy-wait for a while after each call), so they do not steal cores from the next one.
    Each name in ``primed`` gets one untimed call right before its timed one, so a short call is
    timed as in a loop of its own (its weights in the CPU caches), not cold after the others.
    ``clock`` (default ``time.perf_counter``) is what reads the time: a test can pass a fake one.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    sync = sync or (lambda: None)
    clock = clock or time.perf_counter
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
            start = clock()
            fns[name]()
            sync()
            times[name].append(clock() - start)
    return times


PATTERNS = ("loop", "sporadic")
LOOP_PAUSE_S = 0.01  # before each timed loop call: the last candidate's spinning worker threads go idle
SPORADIC_IDLE_S = 0.02  # a call every ~20 ms: OpenMP, ONNX Runtime and TBB workers have stopped spinning


def pattern_options(pattern: str, names: Collection[str], prime: bool = True) -> dict:
    """:func:`interleaved`'s ``pause`` and ``primed`` for a call pattern (see the module docstring);
    ``prime=False`` skips the loop's untimed call before each timed one (a call long enough that the
    caches it starts with do not matter: a batch, as ``cspnet bench`` times batches)."""
    if pattern == "loop":
        return {"pause": LOOP_PAUSE_S, "primed": set(names) if prime else set()}
    if pattern == "sporadic":
        return {"pause": SPORADIC_IDLE_S, "primed": set()}
    raise ValueError(f"pattern={pattern!r} is unknown; choose from {', '.join(PATTERNS)}")


WIN_SHARE = 0.75  # of the interleaved rounds a faster candidate must win against each simpler one


def beats(fast: list[float], slow: list[float], win_share: float = WIN_SHARE) -> bool:
    """Whether ``fast`` was quicker than ``slow`` in at least ``win_share`` of the rounds; samples are
    paired by round (:func:`interleaved` appends one per candidate per round, so each pair ran under
    the same load): a sign test, which a few calls stalled by other processes cannot sway."""
    pairs = list(zip(fast, slow, strict=True))
    return sum(a < b for a, b in pairs) >= win_share * len(pairs)


def choose(samples: dict[str, list[float]], simplicity: Sequence[str] = (), win_share: float = WIN_SHARE) -> str:
    """The winner of a timed race, robust to noise; a pure function of the per-round samples.

    The candidate with the fastest median wins only if it :func:`beats` every simpler candidate
    (quicker in at least ``win_share`` of the rounds); else the simplest candidate it does not beat
    wins. ``simplicity`` lists names simplest first (others rank after, in the order given)."""
    if not samples:
        raise ValueError("no timed candidates to choose from")
    names = list(samples)
    rank = {n: (simplicity.index(n) if n in simplicity else len(simplicity) + names.index(n)) for n in names}
    median = {n: statistics.median(v) for n, v in samples.items()}
    fastest = min(names, key=lambda n: (median[n], rank[n]))
    unbeaten = [n for n in names if rank[n] < rank[fastest] and not beats(samples[fastest], samples[n], win_share)]
    return min(unbeaten, key=lambda n: rank[n]) if unbeaten else fastest
