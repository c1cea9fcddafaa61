"""k-means anchors with the IoU distance, the fit figures, and ``cspnet anchors``."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from cspnet.cli import main
from cspnet.commands.recipes import RECIPES
from cspnet.detection.anchors import anchor_fit, format_anchors, kmeans_anchors, shape_iou
from detect_data import rectangles_set


def test_shape_iou_puts_boxes_on_one_centre():
    iou = shape_iou(np.array([[10.0, 10.0], [20.0, 5.0]]), np.array([[10.0, 10.0], [5.0, 20.0]]))
    assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(50 / 150)
    assert iou[1, 1] == pytest.approx(25 / 175)


def test_kmeans_finds_the_clusters_of_shapes():
    rng = np.random.default_rng(0)
    centres = np.array([[12.0, 30.0], [40.0, 40.0], [120.0, 60.0]])
    wh = np.concatenate([c * rng.uniform(0.9, 1.1, size=(200, 2)) for c in centres])
    anchors = kmeans_anchors(wh, 3)
    assert np.abs(anchors - centres).max() <= 0.06 * centres.max(1).max()  # sorted by area, like the centres
    fit = anchor_fit(wh, anchors)
    assert fit.mean_iou > 0.8 and fit.recall == 1.0 and fit.boxes == 600 and fit.good
    poor = anchor_fit(wh, [[400, 400]])
    assert poor.recall < 0.1 and not poor.good
    assert format_anchors(anchors[:2]) == f"[[{int(anchors[0, 0])},{int(anchors[0, 1])}],[{int(anchors[1, 0])}," \
                                          f"{int(anchors[1, 1])}]]"
    with pytest.raises(ValueError, match="600 boxes cannot make 601 anchors"):
        kmeans_anchors(wh, 601)


def test_anchors_command_prints_both_fits_and_a_set_line(tmp_path):
    data = rectangles_set(tmp_path / "data", n_train=12)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["anchors", "--data", str(data), "--img-size", "64", "--n", "4"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("12 training boxes of ") and "at 64 px" in lines[0]
    assert f"{RECIPES['detect'].default_model}'s anchors" in lines[1] and "k-means, 4 anchors" in lines[2]
    anchors = eval(lines[-1].removeprefix("--set anchors="))  # noqa: S307 - our own output
    assert len(anchors) == 4 and all(len(a) == 2 for a in anchors)
    assert "--set anchors=... must give as many" in out.getvalue()  # 4 is not the model's 6
