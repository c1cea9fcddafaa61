"""``cspnet val --task detect`` and ``cspnet predict --task detect`` on the real tree-crown set: a
darknet cfg + weights and its native conversion score the same, the COCO and YOLO layouts of one
set score the same, and the files a user expects are written."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from cspnet.cli import main
from cspnet.darknet import build, randomize, save_weights

PNG = b"\x89PNG\r\n\x1a\n"


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def one_class_prn(tmp_path_factory):
    """yolov3-tiny-prn.cfg for one class, with random weights (objectness biases raised so that
    some boxes clear the threshold)."""
    from conftest import shared_path

    text = shared_path("reference", "darknet-cfg", "prn", "yolov3-tiny-prn.cfg").read_text()
    text = text.replace("classes=80", "classes=1").replace("filters=255", "filters=18")
    root = tmp_path_factory.mktemp("prn")
    cfg = root / "prn-1.cfg"
    cfg.write_text(text)
    net = randomize(build(cfg), seed=11)
    save_weights(net, root / "prn-1.weights")
    return cfg, root / "prn-1.weights"


@pytest.fixture(scope="module")
def trees():
    from conftest import shared_path

    return shared_path("data", "detect", "deepforest_trees")


def test_darknet_cfg_and_its_native_conversion_score_the_same(one_class_prn, trees, tmp_path, capsys):
    cfg, weights = one_class_prn
    rc, out, err = _run(["val", "--task", "detect", "--cfg", cfg, "--weights", weights, "--data", trees,
                         "--out", tmp_path / "dk", "--img-size", 320, "--threads", 1], capsys)
    assert rc == 0, err
    assert re.fullmatch(r"val mAP@0\.5:0\.95 \d\.\d{4}  mAP@0\.5 \d\.\d{4}", out.strip().splitlines()[-1])
    darknet = json.loads((tmp_path / "dk" / "metrics.json").read_text())
    assert set(darknet) >= {"map", "map50", "map75", "maps", "mapm", "mapl", "ar100", "per_class", "images"}
    assert darknet["images"] == 10 and 0 <= darknet["map"] <= darknet["map50"] <= 1
    results = json.loads((tmp_path / "dk" / "predictions.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert {r["category_id"] for r in results} == {1}
    assert (tmp_path / "dk" / "pr_curve.png").read_bytes()[:8] == PNG
    assert "| Tree | 1 | 241 |" in (tmp_path / "dk" / "per_class_ap.md").read_text()

    native = tmp_path / "prn.safetensors"
    assert main(["convert", "--from", "darknet", str(cfg), str(weights), str(native)]) == 0
    capsys.readouterr()
    rc, out, err = _run(["val", "--task", "detect", "--checkpoint", native, "--data", trees, "--out", tmp_path / "n",
                         "--img-size", 320, "--threads", 1], capsys)
    assert rc == 0, err
    ours = json.loads((tmp_path / "n" / "metrics.json").read_text())
    for key in ("map", "map50", "map75", "ar100"):
        assert ours[key] == pytest.approx(darknet[key], abs=1e-6), key


def test_coco_and_yolo_layouts_of_one_set_score_the_same(one_class_prn, trees, tmp_path, capsys):
    """The same network's predictions scored against the COCO json and against the YOLO labels."""
    cfg, weights = one_class_prn
    scores = []
    for spec in (trees, trees / "data.yaml"):
        out = tmp_path / spec.name
        rc, _, err = _run(["val", "--task", "detect", "--cfg", cfg, "--weights", weights, "--data", spec, "--out", out,
                           "--img-size", 320, "--threads", 1], capsys)
        assert rc == 0, err
        scores.append(json.loads((out / "metrics.json").read_text()))
    assert scores[0]["ar100"] > 0  # something was found, so equal scores mean equal ground truth
    for key in ("map", "map50", "map75", "maps", "mapm", "mapl", "ar100"):
        assert scores[0][key] == pytest.approx(scores[1][key], abs=1e-9), key


def test_predict_draws_boxes_and_writes_detections(one_class_prn, trees, tmp_path, capsys):
    cfg, weights = one_class_prn
    images = sorted((trees / "images" / "val").glob("*.png"))[:2]
    rc, out, err = _run(["predict", "--task", "detect", "--cfg", cfg, "--weights", weights, "--conf", 0.05,
                         "--out", tmp_path / "p", *images], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert [r["file"] for r in report] == [str(p) for p in images]
    for r, path in zip(report, images, strict=True):
        drawn = tmp_path / "p" / (path.stem + ".png")
        assert drawn.read_bytes()[:8] == PNG and Image.open(drawn).size == (r["width"], r["height"])
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"] and d["score"] >= 0.05
            assert d["class"] == "0" and d["label"] == 0  # a one-class cfg without names: the index
    assert sum(len(r["detections"]) for r in report) > 0
    assert out.strip().splitlines()[-1] == f"drawn images and detections.json in {tmp_path / 'p'}"


def test_bad_detection_commands_are_one_line(one_class_prn, trees, tmp_path, capsys):
    cfg, weights = one_class_prn
    broken = tmp_path / "broken.png"
    broken.write_bytes(PNG + b"garbage")
    coco_cfg, coco_weights = tmp_path / "coco.cfg", tmp_path / "coco.weights"
    coco_cfg.write_text(cfg.read_text().replace("classes=1", "classes=80").replace("filters=18", "filters=255"))
    save_weights(build(coco_cfg, 64), coco_weights)
    cases = {
        "cfg without weights": (["val", "--task", "detect", "--cfg", cfg, "--data", trees],
                                "needs both --cfg and --weights"),
        "nothing to evaluate": (["val", "--task", "detect", "--data", trees], "name the detector to evaluate"),
        "classes differ": (["val", "--task", "detect", "--cfg", coco_cfg, "--weights", coco_weights, "--data", trees],
                           "coco.cfg: the detector predicts 80 classes"),
        "a classifier": (["val", "--task", "detect", "--model", "resnet_tiny", "--data", trees], "is not a detector"),
        "corrupt image": (["predict", "--task", "detect", "--cfg", cfg, "--weights", weights, broken],
                          "broken.png: not a readable image"),
        "bad size": (["val", "--task", "detect", "--model", "cspdarknet_tiny_prn", "--data", trees, "--img-size", 100],
                     "--img-size 100 must be a multiple of the detector's stride 32"),
        "bad data": (["val", "--task", "detect", "--model", "cspdarknet_tiny_prn", "--data", tmp_path], "tmp"),
    }
    for name, (argv, message) in cases.items():
        rc, out, err = _run(argv, capsys)
        assert rc == 2, (name, out, err)
        assert err.count("\n") == 1 and "Traceback" not in err and message in err, (name, err)
