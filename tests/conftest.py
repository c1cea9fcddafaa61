"""Shared test helpers: where the read-only reference data lives, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n N` every worker is its own process: one intra-op thread each keeps the
    # cores from being oversubscribed (N workers x default threads)
    torch.set_num_threads(1)

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
