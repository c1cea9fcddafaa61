"""The built-in detection set: the same files on every machine, boxes tight on the pasted digits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from cspnet.data import builtin_detect, load_detection_source


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(builtin_detect, "SPLIT_IMAGES", {"train": 6, "val": 3})


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_builtin_detection_data_is_deterministic_and_tight(small, tmp_path, monkeypatch):
    roots = []
    for k in range(2):
        monkeypatch.setenv("CSPNET_CACHE", str(tmp_path / f"cache{k}"))
        roots.append(builtin_detect.builtin_detection_root())
    assert roots[0] != roots[1] and _digest(roots[0]) == _digest(roots[1])
    source = load_detection_source("builtin")
    assert source.spec == "builtin" and source.classes == [str(d) for d in range(10)] and not source.counts
    assert len(source.train) == 6 and len(source.val) == 3
    for r in source.train:
        pixels = np.asarray(Image.open(r.path).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (builtin_detect.IMG_SIZE,) * 2 + (3,)
        assert 1 <= len(r.boxes) <= builtin_detect.DIGITS_PER_IMAGE[1]
        for x0, y0, x1, y1 in r.boxes:
            assert builtin_detect.DIGIT_SIDE[0] / 3 <= max(x1 - x0, y1 - y0) <= builtin_detect.DIGIT_SIDE[1]
    again = builtin_detect.builtin_detection_root()  # generated once, then reused
    assert again == roots[1]

