"""Shared test helpers: where the read-only reference data lives, and a skip when it is absent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n N` every worker is its own process: one intra-op thread each keeps the
    # cores from being oversubscribed (N workers x default threads)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_sigchld_handler_left_behind():
    """Put SIGCHLD back to its default after each test. A DataLoader with workers installs a Python
    handler for it (torch's worker-failure check) that outlives the loader; Python installs every
    handler with SA_ONSTACK, so each child exit later runs it on the alternate signal stack that
    pytest's faulthandler set up. In full-suite runs that stack's memory was found reused by the heap
    (a core dump showed a dict table in it), and the kernel then killed the worker with SIGSEGV
    (si_code SI_KERNEL) while a test waited for a child: tests that spawn children crashed their xdist
    worker. With the default disposition a child's exit is never delivered as a signal."""
    yield
    if signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


SHARED = Path(os.environ.get("CSPNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear message when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not found: {path} (set CSPNET_SHARED to the shared folder)")
    return path


@pytest.fixture
def shared():
    return shared_path
