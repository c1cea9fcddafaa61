"""Measuring models on this machine: parameter and FLOP counts (:mod:`.profile`), latency,
throughput and memory of models x engines timed interleaved (:mod:`.runner`, :mod:`.engines`,
:mod:`.memprobe`), the tables they make (:mod:`.report`), the paper's baseline-vs-CSP pairs
(:mod:`.pairs`) and the plumbing of benchmark scripts (:mod:`.child`). ``cspnet bench`` is its
command."""

from .pairs import format_pairs, plot_pairs, run_pairs
from .profile import count_macs, count_params, profile
from .report import BenchResult, Row, format_result
from .runner import PAIRS, run_bench

__all__ = [
    "PAIRS",
    "BenchResult",
    "Row",
    "count_macs",
    "count_params",
    "format_pairs",
    "format_result",
    "plot_pairs",
    "profile",
    "run_bench",
    "run_pairs",
]
