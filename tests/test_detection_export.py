"""Detector export: the decode (and NMS) in the ONNX graph runs in ONNX Runtime and OpenCV DNN with
PyTorch's raw maps, ``Detector.decode``'s boxes and scores and ``Detector.predict``'s NMS; the CLI
writes it, fails naming the engine, and rejects bad options in one line."""

from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch

import cspnet
from cspnet.checkpoint import save_checkpoint
from cspnet.cli import main
from cspnet.detection.export import DecodedDetector, check_detector_onnx, export_detector
from cspnet.detection.yolo_decode import nms
from cspnet.inference import export as export_mod

TINY = ["cspdarknet_tiny_prn", "cspdarknet_tiny_fpn", "cspresnext_tiny_panet"]
TOL = 1e-4


def _detector(name, num_classes=3, scale_x_y=None, new_coords=False):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=num_classes).eval()
    if scale_x_y or new_coords:  # other decodes: every head changes the same way in both paths
        model.heads = [replace(h, scale_x_y=scale_x_y or h.scale_x_y, new_coords=new_coords) for h in model.heads]
    return model


def _ort(path, x):
    return [torch.as_tensor(o) for o in export_mod.run_onnxruntime(path, [x])]


def _predict_style(model, x, conf, iou, max_det):
    """What ``Detector.predict`` keeps for an input already at the network size (no letterbox)."""
    with torch.no_grad():
        return nms(model.decode(model(x), tuple(x.shape[-2:])), conf, iou, max_det)


def _by_score(boxes, scores, labels):
    order = torch.argsort(scores, descending=True, stable=True)
    return boxes[order], scores[order], labels[order]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("variant", [{}, {"scale_x_y": 1.1}, {"new_coords": True}])
def test_the_graph_decode_equals_detector_decode(name, variant):
    """The exported form's tensor-op decode (constant grids) is Detector.decode, in PyTorch."""
    model = _detector(name, **variant)
    form = DecodedDetector(model, 64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        *raws, boxes, scores = form(x)
        dec = model.decode(raws, (64, 64))
    assert boxes.shape == (2, dec.shape[1], 4) and scores.shape == (2, dec.shape[1], 3)
    torch.testing.assert_close(boxes, dec[..., :4], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scores, dec[..., 4:5] * dec[..., 5:], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", TINY)
def test_every_neck_exports_with_its_decode_and_matches_in_both_engines(name, tmp_path):
    model = _detector(name, scale_x_y=1.05 if name.endswith("panet") else None)
    path = tmp_path / "d.onnx"
    result = export_detector(model, path, img_size=64)
    assert [c.engine for c in result.checks] == ["onnxruntime", "opencv"]
    for check in result.checks:
        assert check.error is None, check.error
        assert set(check.parts) == {"raw", "boxes", "scores"} and check.rel_diff <= TOL, result.summary()
    assert result.ok
    names = [n for n, _ in result.outputs]
    n = sum(h.num_anchors * (64 // s) ** 2 for h, s in zip(model.heads, model.strides, strict=True))
    assert names == [f"raw{i}" for i in range(len(model.heads))] + ["boxes", "scores"]
    assert dict(result.outputs)["boxes"] == (1, n, 4) and dict(result.outputs)["scores"] == (1, n, 3)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"Sigmoid", "Exp"} <= ops and not ops & {"BatchNormalization", "NonMaxSuppression"}
    # the file's boxes and scores are Detector.decode's, in pixels
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    *raws, boxes, scores = _ort(path, x)
    with torch.no_grad():
        dec = model.decode(model(x), (64, 64))
    scale = dec[..., :4].abs().amax(-1, keepdim=True).clamp(min=1)
    assert ((boxes - dec[..., :4]).abs() / scale).max() <= TOL
    assert (scores - dec[..., 4:5] * dec[..., 5:]).abs().max() <= TOL * scores.abs().max()


@pytest.fixture(scope="module")
def nms_export(tmp_path_factory):
    """cspdarknet_tiny_prn at 128 px, dynamic batch, NMS in the graph; its output convs scaled down and
    two anchors' objectness and one class each biased up: some 40 candidates per image, boxes of
    anchor size overlapping, 10 to 12 detections of 3 classes left (12 is ``max_det``)."""
    model = _detector("cspdarknet_tiny_prn")
    with torch.no_grad():
        for head in model.head:
            head.pred.weight *= 0.05
        bias = model.head[0].pred.bias.view(3, 8)  # stride 32: (anchor, tx ty tw th obj classes)
        bias[1, [4, 7]] = 3.0  # anchor 135x169: class 2
        bias[2, [4, 5]] = 3.0  # anchor 344x319: class 0
    path = tmp_path_factory.mktemp("nms") / "nms.onnx"
    options = {"conf": 0.3, "iou": 0.45, "max_det": 12}
    result = export_detector(model, path, img_size=128, nms=True, dynamic_batch=True, **options)
    return model, path, result, options


def test_nms_in_the_graph_equals_predict_nms(nms_export):
    model, path, result, options = nms_export
    assert result.ok, result.summary()
    assert [n for n, _ in result.outputs][-4:] == ["num_dets", "det_boxes", "det_scores", "det_labels"]
    assert dict(result.outputs)["det_boxes"] == ("batch", 12, 4)
    assert "NonMaxSuppression" in {node.op_type for node in onnx.load(str(path)).graph.node}
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    expected = _predict_style(model, x, **options)
    engines = {"onnxruntime": _ort(path, x)}
    if "nms" in result.checks[1].parts:  # OpenCV 5 runs NonMaxSuppression; 4.x has no such layer
        engines["opencv"] = [torch.as_tensor(o) for o in export_mod.run_opencv(path, [x])]
    counts = [len(e["labels"]) for e in expected]
    assert 12 in counts and min(counts) >= 5 and {int(lbl) for e in expected for lbl in e["labels"]} == {0, 1, 2}
    for engine, outs in engines.items():
        num, det_boxes, det_scores, det_labels = outs[-4:]
        for i, exp in enumerate(expected):
            n = int(num[i])
            assert n == len(exp["labels"]), engine
            got = _by_score(det_boxes[i, :n], det_scores[i, :n], det_labels[i, :n])
            want = _by_score(exp["boxes"], exp["scores"], exp["labels"])
            assert torch.equal(got[2], want[2]), engine
            torch.testing.assert_close(got[0], want[0], rtol=TOL, atol=1e-3)
            torch.testing.assert_close(got[1], want[1], rtol=TOL, atol=1e-6)
            assert (det_labels[i, n:] == -1).all() and (det_scores[i, n:] == 0).all() and (det_boxes[i, n:] == 0).all()


def test_an_engine_without_nms_is_checked_on_the_graph_before_it(nms_export, monkeypatch):
    """OpenCV 4.x has no NonMaxSuppression layer: the same file cut before its NMS is checked there."""
    model, path, result, options = nms_export
    real = export_mod.RUNNERS["opencv"]

    def opencv_4(p, inputs):
        if "NonMaxSuppression" in {n.op_type for n in onnx.load(str(p)).graph.node}:
            raise RuntimeError('OpenCV(4.10.0) error: Can\'t create layer "nms_1" of type "NonMaxSuppression"')
        return real(p, inputs)

    monkeypatch.setitem(export_mod.RUNNERS, "opencv", opencv_4)
    x = torch.rand(1, 3, 128, 128)
    ort, cv = check_detector_onnx(path, model, DecodedDetector(model, 128, True, **options), [x],
                                  ["onnxruntime", "opencv"])
    assert ort.ok(TOL) and "nms" in ort.parts and ort.detections > 0
    assert cv.ok(TOL) and set(cv.parts) == {"raw", "boxes", "scores"}
    assert "no NonMaxSuppression layer" in cv.note and "checked in onnxruntime only" in cv.note


@pytest.mark.parametrize("output", [2, 3])
def test_a_shifted_box_or_score_fails_the_check(nms_export, monkeypatch, output):
    """The check is not drowned by untrained outputs' scale: half a pixel on the boxes, or scores 1%
    off, is far over the tolerance."""
    model, path, result, options = nms_export
    real = export_mod.RUNNERS["onnxruntime"]

    def perturbed(p, inputs):
        outs = real(p, inputs)
        outs[output] = outs[output] + 0.5 if output == 2 else outs[output] * 1.01
        return outs

    monkeypatch.setitem(export_mod.RUNNERS, "onnxruntime", perturbed)
    form = DecodedDetector(model, 128, True, **options)
    (check,) = check_detector_onnx(path, model, form, [torch.rand(1, 3, 128, 128)], ["onnxruntime"])
    assert not check.ok(TOL) and check.parts["raw"] <= TOL
    assert check.parts["boxes" if output == 2 else "scores"] > 10 * TOL


def test_cli_exports_yolov3_tiny_prn_with_nms_end_to_end(tmp_path, capsys):
    out = tmp_path / "y.onnx"
    assert main(["export", "yolov3_tiny_prn", "-o", str(out), "--img-size", "128", "--nms"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "decode and NMS in the graph (conf 0.25, iou 0.45, max-det 300)" in text
    assert "raw0 (1, 255, 4, 4), raw1 (1, 255, 8, 8), boxes (1, 240, 4), scores (1, 240, 80), num_dets (1,)" in text
    assert "det_boxes (1, 300, 4), det_scores (1, 300), det_labels (1, 300)" in text
    for engine in ("onnxruntime", "opencv"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(engine))
        assert "raw " in line and "boxes " in line and "scores " in line and line.endswith("ok")


def test_cli_exports_a_detector_checkpoint_raw(tmp_path, capsys):
    ckpt = tmp_path / "det.safetensors"
    save_checkpoint(_detector("cspdarknet_tiny_prn", num_classes=4), ckpt)
    assert main(["export", str(ckpt), "-o", str(tmp_path / "r.onnx"), "--raw", "--img-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "raw head maps only" in text and "raw0 (1, 27, 2, 2), raw1 (1, 27, 4, 4)" in text
    assert [o.name for o in onnx.load(str(tmp_path / "r.onnx")).graph.output] == ["raw0", "raw1"]


def test_cli_exits_1_naming_each_failing_engine(tmp_path, capsys, monkeypatch):
    real = export_mod.RUNNERS["onnxruntime"]

    def shifted(p, inputs):  # boxes half a pixel off
        outs = real(p, inputs)
        outs[2] = outs[2] + 0.5
        return outs

    def broken(p, inputs):
        raise RuntimeError("layer Foo is not supported")

    monkeypatch.setitem(export_mod.RUNNERS, "onnxruntime", shifted)
    monkeypatch.setitem(export_mod.RUNNERS, "opencv", broken)
    out = tmp_path / "d.onnx"
    assert main(["export", "cspdarknet_tiny_prn", "-o", str(out), "--img-size", "64"]) == 1
    captured = capsys.readouterr()
    assert "opencv       FAILED: layer Foo is not supported" in captured.out
    assert "FAILED (> 0.0001)" in next(ln for ln in captured.out.splitlines() if "onnxruntime" in ln)
    assert "check failed in onnxruntime, opencv" in captured.err and out.is_file()


@pytest.mark.parametrize("args, expect", [
    (["--img-size", "100"], "--img-size 100 is not divisible by the model's stride 32; use 96 or 128"),
    (["--img-size", "16"], "--img-size 16 is not divisible by the model's stride 32; use 32"),
    (["--conf", "0.5"], "--conf 0.5 applies only with --nms"),
    (["--nms", "--iou", "1.5"], "--iou 1.5 must lie in [0, 1]"),
    (["--nms", "--raw"], "--raw writes no decode to run NMS on"),
])
def test_bad_detector_options_are_one_line_and_exit_2(args, expect, tmp_path, capsys):
    assert main(["export", "cspdarknet_tiny_prn", "-o", str(tmp_path / "d.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cspnet export: error: ") and expect in err
    assert not (tmp_path / "d.onnx").exists()


def test_detector_options_on_a_classifier_are_one_line(tmp_path, capsys):
    assert main(["export", "resnet_tiny", "-o", str(tmp_path / "c.onnx"), "--nms"]) == 2
    assert "--nms applies to detectors; resnet_tiny is not one" in capsys.readouterr().err
