"""ONNX export: one model of every family runs in ONNX Runtime and OpenCV DNN with PyTorch's
outputs; bad input is one line and a non-zero exit."""

import importlib.util
import os
from pathlib import Path

import onnx
import pytest
import torch

import cspnet
from cspnet.checkpoint import save_checkpoint
from cspnet.cli import main
from cspnet.inference import export as export_mod
from cspnet.inference.export import export_onnx

# one model per family; the darknet one with Mish, the activation OpenCV 4.x cannot read as an op
FAMILY_MODELS = {
    "resnet": ("cspresnext_tiny", {}),
    "darknet": ("cspdarknet_tiny", {"act": "mish"}),
    "densenet": ("cspdensenet_tiny", {}),
    "peleenet": ("csppeleenet_tiny", {}),
}
AVAILABLE = {f: v for f, v in FAMILY_MODELS.items() if v[0] in cspnet.list_models()}


@pytest.mark.parametrize("family", sorted(AVAILABLE))
def test_every_family_exports_and_matches_in_both_engines(family, tmp_path):
    name, overrides = AVAILABLE[family]
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=10, **overrides)
    x = torch.randn(1, 3, 64, 64)
    result = export_onnx(model, x, tmp_path / "m.onnx")
    assert [c.engine for c in result.checks] == ["onnxruntime", "opencv"]
    for check in result.checks:
        assert check.error is None, check.error
        assert check.max_abs_diff <= 1e-3
    assert result.ok
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert not graph.graph.initializer[0].external_data  # a plain single file, weights inside
    ops = {n.op_type for n in graph.graph.node}
    assert "BatchNormalization" not in ops  # folded before export
    if overrides.get("act") == "mish":
        assert "Mish" not in ops and {"Softplus", "Tanh"} <= ops


def test_dynamic_batch_and_several_outputs(tmp_path):
    """A features_only model stands in for detectors: several outputs, any batch."""
    model = cspnet.create_model("resnet_tiny", features_only=True, out_indices=(2, 3))
    result = export_onnx(model, torch.randn(1, 3, 64, 64), tmp_path / "f.onnx", dynamic_batch=True)
    assert result.ok, result.summary()
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    assert len(graph.output) == 2
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_cli_prints_both_engines_and_exits_zero(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["export", "resnet_tiny", "--output", str(out), "--img-size", "64"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "onnxruntime" in text and "opencv" in text and "max abs diff" in text


def test_cli_exports_a_checkpoint_by_itself(tmp_path, capsys):
    ckpt = tmp_path / "w.safetensors"
    save_checkpoint(cspnet.create_model("resnet_tiny", num_classes=7), ckpt)
    assert main(["export", str(ckpt), "-o", str(tmp_path / "w.onnx"), "--img-size", "32"]) == 0
    graph = onnx.load(str(tmp_path / "w.onnx")).graph
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7


def test_a_failing_engine_exits_non_zero(tmp_path, capsys, monkeypatch):
    def broken(path, inputs):
        raise RuntimeError("layer Foo is not supported")

    monkeypatch.setitem(export_mod.RUNNERS, "opencv", broken)
    assert main(["export", "resnet_tiny", "-o", str(tmp_path / "r.onnx"), "--img-size", "32"]) == 1
    captured = capsys.readouterr()
    assert "opencv       FAILED: layer Foo is not supported" in captured.out
    assert "check failed in opencv" in captured.err


def test_a_difference_over_the_tolerance_exits_non_zero(tmp_path, capsys, monkeypatch):
    real = export_mod.RUNNERS["onnxruntime"]
    monkeypatch.setitem(export_mod.RUNNERS, "onnxruntime", lambda p, i: [o + 0.01 for o in real(p, i)])
    assert main(["export", "resnet_tiny", "-o", str(tmp_path / "r.onnx"), "--img-size", "32"]) == 1
    assert "check failed in onnxruntime" in capsys.readouterr().err


def _read_only_dir(tmp_path) -> Path:
    """A directory nobody may write to: chmod 555, or /sys where root ignores permission bits."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if Path("/sys").is_dir():  # sysfs refuses new files even to root
        return Path("/sys")
    pytest.skip("no read-only directory available to root here")


@pytest.mark.parametrize("case", ["unknown model", "other model's checkpoint", "checkpoint keys", "opset",
                                  "img size", "missing dir", "read-only dir", "suffix"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    args = ["export", "resnet_tiny", "-o", out, "--img-size", "64"]
    expect = {
        "unknown model": "unknown model 'resnet_tinyy'",
        "other model's checkpoint": "holds weights of model 'resnet_tiny', not 'cspresnet_tiny'",
        "checkpoint keys": "missing key",
        "opset": "opset 11 is not supported; choose 18..",
        "img size": "--img-size 100 is not divisible by the model's stride 32; use 96 or 128",
        "missing dir": "does not exist",
        "read-only dir": "cannot write in directory",
        "suffix": "must end in .onnx",
    }[case]
    if case == "unknown model":
        args[1] = "resnet_tinyy"
    elif case in ("other model's checkpoint", "checkpoint keys"):
        ckpt = tmp_path / "w.safetensors"
        save_checkpoint(cspnet.create_model("resnet_tiny"), ckpt)
        if case == "checkpoint keys":  # the same file without its metadata: only the keys can tell
            from safetensors.torch import load_file, save_file

            save_file(load_file(str(ckpt)), str(ckpt))
        args[1:2] = ["cspresnet_tiny", "--checkpoint", str(ckpt)]
    elif case == "opset":
        args += ["--opset", "11"]
    elif case == "img size":
        args[1:2], args[-1] = ["cspdarknet_tiny_prn"], "100"  # classifiers run at any size; detectors do not
    elif case == "missing dir":
        args[3] = str(tmp_path / "nope" / "m.onnx")
    elif case == "read-only dir":
        args[3] = str(_read_only_dir(tmp_path) / "m.onnx")
    elif case == "suffix":
        args[3] = str(tmp_path / "m.txt")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cspnet export: error: ") and expect in err
    assert not (tmp_path / "m.onnx").exists()


HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO,
                                    reason="openvino is not installed (pip install 'cspnet[inference]')")


@needs_openvino
def test_openvino_ir_is_written_with_fp32_weights_and_checked(tmp_path, capsys):
    out = tmp_path / "r.xml"
    assert main(["export", "cspdarknet_tiny", "--format", "openvino", "-o", str(out), "--img-size", "64",
                 "--dynamic-batch"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert "openvino     max abs diff vs PyTorch" in text and text.rstrip().endswith("ok")
    model = cspnet.create_model("cspdarknet_tiny")
    weights = sum(p.numel() for p in model.parameters())
    assert out.with_suffix(".bin").stat().st_size >= 4 * 0.9 * weights  # fp32, not compressed to fp16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@needs_openvino
def test_openvino_check_failure_exits_non_zero(tmp_path, capsys, monkeypatch):
    real = export_mod.RUNNERS["openvino"]
    monkeypatch.setitem(export_mod.RUNNERS, "openvino", lambda p, i: [o + 0.01 for o in real(p, i)])
    assert main(["export", "resnet_tiny", "--format", "openvino", "-o", str(tmp_path / "r.xml"),
                 "--img-size", "32"]) == 1
    assert "check failed in openvino" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["suffix", "missing", "detector"])
def test_openvino_bad_input_is_one_line(case, tmp_path, capsys, monkeypatch):
    import sys

    args = ["export", "resnet_tiny", "--format", "openvino", "-o", str(tmp_path / "r.xml"), "--img-size", "32"]
    if case == "suffix":
        args[5] = str(tmp_path / "r.onnx")
        expect = "must end in .xml"
    elif case == "missing":
        monkeypatch.setitem(sys.modules, "openvino", None)
        expect = "--format openvino: openvino is not installed: pip install 'cspnet[inference]'"
    else:
        args[1], args[-1] = "cspdarknet_tiny_fpn", "64"
        expect = "--format openvino is for classifiers; a detector exports as ONNX"
        if not HAVE_OPENVINO:
            pytest.skip("openvino is not installed")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cspnet export: error: ") and expect in err, err
    assert not list(tmp_path.iterdir())
