"""int8: ONNX Runtime's static quantization, run in OpenVINO and ONNX Runtime, never called exact,
always reported with its accuracy cost (top-1 of fp32 and int8 on a validation split of the built-in
digits, on a tiny trained model); bad calibration data and --max-drop refusals are one line, and the
exact candidates remain."""

import pytest
import torch

import cspnet
from cspnet.checkpoint import save_checkpoint
from cspnet.cli import main
from cspnet.inference import int8 as int8_mod
from cspnet.inference.int8 import Int8Accuracy, backend_missing, calibration_batches, load_calibration
from cspnet.inference.optimize import INT8_CANDIDATES, optimize_for_inference

AVAILABLE = [c for c in INT8_CANDIDATES if backend_missing(c.removeprefix("int8_")) is None]
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no int8 backend: pip install 'cspnet[inference]'")
SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A width-scaled CSP model trained for a few seconds on the digits (~80% top-1), its checkpoint,
    600 calibration images from the train split and the 360-image validation split, with labels."""
    calib, val = load_calibration("builtin", 1, SIZE, 600)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = cspnet.create_model("cspresnet_tiny", num_classes=10, in_chans=1, width_mult=0.25)
        opt = torch.optim.AdamW(model.parameters(), 1e-2)
        for _ in range(8):
            for x, y in calib:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    ckpt = tmp_path_factory.mktemp("int8") / "digits.safetensors"
    save_checkpoint(model, ckpt, extra={"classes": [str(i) for i in range(10)]})
    return model, ckpt, calib, val


def _top1(model, batches):
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def test_int8_candidates_are_never_exact_and_report_their_accuracy_cost(trained):
    model, _, calib, val = trained
    x = torch.randn(1, 1, SIZE, SIZE)
    fast = optimize_for_inference(model, x, candidates=["eager", *AVAILABLE], int8=calib[:4], int8_val=val,
                                  rounds=3, warmup=1)
    top1 = _top1(model, val)
    assert top1 > 0.6  # the model learned something: top-1 changes mean something
    for name in AVAILABLE:
        r = fast.report.candidates[name]
        assert r.error is None, r.error
        acc = r.accuracy
        assert not r.exact and r.max_diff > 0 and r.latency.runs == 3
        assert acc.images == 360 and acc.on == "validation data"
        assert acc.top1_fp32 == pytest.approx(top1)
        assert acc.drop == pytest.approx(100 * (acc.top1_fp32 - acc.top1_int8))
        assert abs(acc.drop) <= 5.0 and acc.agreement >= 0.9  # calibrated on real images: close to fp32
    text = fast.report.summary()
    assert "never exact" in text and "top-1 fp32" in text and "360 images of the validation data" in text
    out = fast(torch.randn(3, 1, SIZE, SIZE))  # an int8 form takes any batch (it was exported so)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)


def test_a_miscalibrated_int8_model_is_refused_by_max_drop_and_the_exact_candidates_remain(trained):
    """Calibrated on images 1000x too bright, the int8 ranges swallow the real inputs: a real loss."""
    model, _, calib, val = trained
    bad = [(x * 1000, y) for x, y in calib[:2]]
    x = torch.randn(1, 1, SIZE, SIZE)
    fast = optimize_for_inference(model, x, candidates=["eager", "channels_last", AVAILABLE[0]], int8=bad,
                                  int8_val=val, max_drop=5.0, rounds=2, warmup=1)
    r = fast.report.candidates[AVAILABLE[0]]
    assert r.accuracy.drop > 5.0 and r.latency is None
    assert r.error == f"refused: top-1 drop {r.accuracy.drop:.2f} points > max_drop=5"
    assert fast.chosen in ("eager", "channels_last")
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() <= 1e-4


def test_accuracy_without_labels_counts_changed_answers():
    acc = Int8Accuracy(images=10, max_diff=0.1, agreement=0.9)
    assert acc.drop == pytest.approx(10.0) and "same top-1 class on 90.0%" in acc.summary()
    assert Int8Accuracy(images=4, max_diff=0.1, agreement=1.0, top1_fp32=0.5, top1_int8=0.75).drop == -25.0


@pytest.mark.parametrize("data,expect", [
    ([], "int8: the calibration data holds no images"),
    (torch.zeros(0, 1, SIZE, SIZE), "int8: the calibration data holds no images"),
    (torch.zeros(4, 3, SIZE, SIZE), "int8: the calibration images have 3 channels; the model takes 1"),
    ([torch.zeros(SIZE, SIZE)], "int8: calibration images must be (N, C, H, W), got shape (32, 32)"),
    ("builtin", "int8: a calibration batch must be an image tensor, got str"),
])
def test_bad_calibration_data_is_one_line(data, expect, trained):
    model = trained[0]
    with pytest.raises(ValueError) as e:
        optimize_for_inference(model, torch.randn(1, 1, SIZE, SIZE), int8=data)
    assert str(e.value) == expect


def test_calibration_batches_accept_tensors_pairs_and_loader_batches():
    x, y = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])
    got = calibration_batches([x, (x, y), {"inputs": x, "targets": y}], 1)
    assert [b[1] is None for b in got] == [True, False, False] and all(b[0].shape == (2, 1, 8, 8) for b in got)


def test_cli_int8_export_reports_top1_and_writes_the_file(trained, tmp_path, capsys):
    _, ckpt, _, _ = trained
    fmt, suffix = ("openvino", ".xml") if "int8_openvino" in AVAILABLE else ("onnx", ".onnx")
    out = tmp_path / f"q{suffix}"
    assert main(["export", str(ckpt), "-o", str(out), "--format", fmt, "--img-size", str(SIZE), "--int8",
                 "--calib-data", "builtin", "--calib-size", "200", "--max-drop", "5"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "int8" in text and "never exact" in text
    assert "int8 on 360 images of the validation data" in text and "top-1 fp32" in text


@pytest.mark.skipif("int8_onnxruntime" not in AVAILABLE, reason="needs onnxruntime")
def test_cli_max_drop_refuses_in_one_line_and_writes_nothing(trained, tmp_path, capsys, monkeypatch):
    _, ckpt, _, _ = trained
    real = int8_mod.quantize_onnxruntime
    monkeypatch.setattr(int8_mod, "quantize_onnxruntime", lambda onnx, b: real(onnx, [(x * 1000, y) for x, y in b]))
    out = tmp_path / "q.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--img-size", str(SIZE), "--int8", "--calib-data", "builtin",
                 "--calib-size", "100", "--max-drop", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cspnet export: error: int8 loses ")
    assert "top-1 points on 360 validation images (> --max-drop 0.5); nothing written" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["no calib data", "calib without int8", "negative drop", "empty data", "detector"])
def test_cli_int8_bad_input_is_one_line(case, trained, tmp_path, capsys):
    _, ckpt, _, _ = trained
    args = ["export", str(ckpt), "-o", str(tmp_path / "q.onnx"), "--img-size", str(SIZE)]
    if case == "no calib data":
        args += ["--int8"]
        expect = "--int8 needs --calib-data: the images to calibrate on"
    elif case == "calib without int8":
        args += ["--calib-data", "builtin"]
        expect = "--calib-data builtin applies only with --int8"
    elif case == "negative drop":
        args += ["--int8", "--calib-data", "builtin", "--max-drop", "-1"]
        expect = "--max-drop -1 must be >= 0 (top-1 points)"
    elif case == "empty data":
        for split in ("train", "val"):
            (tmp_path / "empty" / split / "a").mkdir(parents=True)
        args += ["--int8", "--calib-data", str(tmp_path / "empty")]
        expect = "empty"
    else:
        args[1] = "cspdarknet_tiny_fpn"
        args[5] = "64"
        args += ["--int8", "--calib-data", "builtin"]
        expect = "--int8 is for classifiers; a detector exports as ONNX"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cspnet export: error: ") and expect in err, err
    assert not (tmp_path / "q.onnx").exists()
