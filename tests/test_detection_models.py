"""The detectors as native models: the cfg ones equal their darknet cfg (params, BFLOPs, and the raw
head outputs once the cfg's weights are mapped on), the neck and head options build on any backbone,
and ``predict`` maps boxes back to each image as torchvision's detectors do."""

from __future__ import annotations

import pytest
import torch

import cspnet
from cspnet.bench.profile import profile
from cspnet.checkpoint import save_checkpoint
from cspnet.cli import main as cli
from cspnet.convert import match_native, to_native_model
from cspnet.convert.darknet import compare_outputs
from cspnet.darknet import build, randomize, save_weights
from cspnet.detection import Detector

CFG_DETECTORS = {  # native model -> its cfg
    "cspresnext50_panet_spp": "csresnext50-panet-spp.cfg",
    "cspresnet50_panet_spp": "csresnet50-panet-spp.cfg",
    "cspdarknet53_panet_spp": "csdarknet53-panet-spp.cfg",
    "yolov3_tiny": "prn/yolov3-tiny.cfg",
    "yolov3_tiny_prn": "prn/yolov3-tiny-prn.cfg",
}
TINY_DETECTORS = ["cspresnext_tiny_panet", "cspdarknet_tiny_fpn", "cspdarknet_tiny_prn", "csppeleenet_tiny_efm",
                  "csppeleenet_tiny_gfm"]


def _cfg(shared, name):
    return shared("reference", "darknet-cfg", *CFG_DETECTORS[name].split("/"))


def _cfg_figures(path, size=None):
    with torch.device("meta"):
        net = build(path, size)
    return sum(i.params for i in net.info), sum(i.weights for i in net.info), 2 * sum(i.macs for i in net.info) / 1e9


@pytest.mark.parametrize("name", list(CFG_DETECTORS))
def test_cfg_detectors_have_their_cfgs_params_and_bflops(name, shared):
    path = _cfg(shared, name)
    params, weights, gflops = _cfg_figures(path)
    with torch.device("meta"):
        model = cspnet.create_model(name)
    ref = model.cfg.reference
    p = profile(model, ref.img_size)
    assert p.params == params and p.weights == weights  # the same layers: exact
    assert p.gflops == pytest.approx(gflops, rel=1e-9)
    assert p.params / 1e6 == pytest.approx(ref.params, rel=0.005) and p.gflops == pytest.approx(ref.gflops, rel=0.005)


def test_panet_spp_bflops_at_512_equal_index_md(shared):
    """INDEX.md recomputes csresnext50-panet-spp at 512 (conv layers only): 71.291 BFLOPs."""
    with torch.device("meta"):
        model = cspnet.create_model("cspresnext50_panet_spp")
    assert profile(model, 512).gflops == pytest.approx(71.291, rel=0.005)
    text = shared("reference", "darknet-cfg", "INDEX.md").read_text()
    assert "csresnext50-panet-spp 71.291" in text


@pytest.mark.parametrize("name", list(CFG_DETECTORS))
def test_darknet_weights_map_onto_the_native_detector(name, shared, tmp_path):
    """Random weights in a .weights file: the native detector gives the cfg network's raw head maps."""
    path = _cfg(shared, name)
    net = build(path, 64)
    weights = tmp_path / "random.weights"
    save_weights(randomize(net, seed=3), weights)
    model = to_native_model(path, weights, verify=False)
    assert model.model_name == name and isinstance(model, Detector)
    diff, scale = compare_outputs(net, model, (64, 64), seed=1)
    assert diff <= 1e-4 and scale > 1e-2  # outputs of some size, equal to the float32 noise level


def test_a_cfg_with_other_anchors_maps_with_its_own(shared):
    """The "optimal" cfg: the same layers as csresnext50-panet-spp.cfg with YOLOv4's anchors and
    scale_x_y; the native model takes the cfg's anchors."""
    path = shared("reference", "darknet-cfg", "csresnext50-panet-spp-original-optimal.cfg")
    with torch.device("meta"):
        net = build(path)
        match = match_native(net)
        model = match.create()
    assert match.name == "cspresnext50_panet_spp"
    assert [h.anchors for h in model.heads] == [h.anchors for h in net.heads]
    assert [h.scale_x_y for h in model.heads] == [h.scale_x_y for h in net.heads]
    assert model.heads[0].anchors[0] == (12.0, 16.0)  # YOLOv4's first anchor, not YOLOv3's (10, 13)


def test_convert_a_detector_cfg_on_the_command_line(shared, tmp_path, capsys):
    path = _cfg(shared, "yolov3_tiny_prn")
    net = build(path, 64)
    weights, out = tmp_path / "prn.weights", tmp_path / "prn.safetensors"
    save_weights(randomize(net, seed=5), weights)
    assert cli(["convert", "--from", "darknet", str(path), str(weights), str(out)]) == 0
    assert "yolov3_tiny_prn" in capsys.readouterr().out
    model = cspnet.create_model(checkpoint=str(out))  # no name: the checkpoint says
    diff, _ = compare_outputs(net, model, (64, 64), seed=2)
    assert isinstance(model, Detector) and model.num_classes == 80 and diff <= 1e-4


def test_cspnet_info_prints_a_detectors_outputs(capsys):
    assert cli(["info", "yolov3_tiny_prn"]) == 0
    out = capsys.readouterr().out
    assert "input        3x416x416" in out and "GFLOPs       3.461" in out
    assert "outputs      level  channels  stride  anchors" in out
    assert "(81, 82), (135, 169), (344, 319)" in out and "(23, 27), (37, 58), (81, 82)" in out


@pytest.mark.parametrize("name", TINY_DETECTORS)
def test_tiny_detectors_run_on_non_square_input_and_round_trip_a_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape for o in outs] == [(2, 3 * 8, 96 // s, 64 // s) for s in model.strides]
    assert all(torch.isfinite(o).all() for o in outs)
    save_checkpoint(model, tmp_path / "d.safetensors")
    again = cspnet.create_model(checkpoint=str(tmp_path / "d.safetensors")).eval()
    with torch.no_grad():
        for a, b in zip(outs, again(x), strict=True):
            torch.testing.assert_close(a, b)
    one = cspnet.create_model(checkpoint=str(tmp_path / "d.safetensors"), num_classes=1)  # fine-tune on 1 class
    assert [h.pred.out_channels for h in one.head] == [3 * 6] * len(model.strides) and one.num_classes == 1


def test_neck_and_backbone_options_apply_to_any_detector():
    fpn = cspnet.create_model("cspresnext_tiny_panet", neck="fpn", spp=False)
    assert fpn.strides == [32, 16, 8] and type(fpn.neck).__name__ == "FPN"
    plain = cspnet.create_model("cspresnext_tiny_panet", fusion="none")  # the baseline: the backbone without CSP
    assert {s.fusion for s in plain.backbone.stages} == {"none"} and dict(plain.cfg.backbone_args) == {"fusion": "none"}
    assert profile(plain, 128).params != profile(cspnet.create_model("cspresnext_tiny_panet"), 128).params
    with pytest.raises(ValueError, match="unknown option 'fuson'"):
        cspnet.create_model("cspresnext_tiny_panet", fuson="none")
    with pytest.raises(ValueError, match="features_only=True gives a classifier's feature levels; yolov3_tiny"):
        cspnet.create_model("yolov3_tiny", features_only=True)
    with pytest.raises(ValueError, match="neck='bifpn' is not allowed"):
        cspnet.create_model("cspresnext_tiny_panet", neck="bifpn")


def test_priors_start_at_a_few_objects_per_image():
    model = cspnet.create_model("cspdarknet_tiny_prn", num_classes=4)
    for head, stride in zip(model.head, model.strides, strict=True):
        bias = head.pred.bias.view(3, 9)
        expected = torch.log(torch.tensor(8 / (128 / stride) ** 2)).item()
        torch.testing.assert_close(bias[:, 4], torch.full((3,), expected))


def test_predict_maps_boxes_back_to_each_image(monkeypatch):
    """A forward that puts one confident box in the centre cell of the stride-32 output: predict
    must return it in the original (non-square) image's pixels."""
    model = cspnet.create_model("cspdarknet_tiny_prn", num_classes=2).eval()
    size = 128
    coarse = model.strides.index(32)

    def forward(x):
        outs = []
        for i, s in enumerate(model.strides):
            raw = torch.full((x.shape[0], 3, 7, size // s, size // s), -20.0)
            raw[:, :, :4] = 0.0
            if i == coarse:
                raw[:, 0, 4, 2, 2] = 20.0  # objectness of anchor 0 in cell (row 2, col 2)
                raw[:, 0, 6, 2, 2] = 20.0  # class 1
            outs.append(raw.view(x.shape[0], -1, size // s, size // s))
        return outs

    monkeypatch.setattr(model, "forward", forward)
    image = torch.rand(3, 200, 100)  # H 200, W 100: letterboxed at scale 0.64, padded 32 px left and right
    (det,) = model.predict(image, img_size=size)
    aw, ah = model.heads[coarse].anchors[0]
    cx, cy = (2 + 0.5) * 32, (2 + 0.5) * 32
    expected = torch.tensor([[cx - aw / 2 - 32, cy - ah / 2, cx + aw / 2 - 32, cy + ah / 2]]) / 0.64
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 100)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 200)
    assert det["labels"].tolist() == [1] and det["scores"][0] > 0.99
    torch.testing.assert_close(det["boxes"], expected, atol=1e-3, rtol=0)
    two = model.predict([image, torch.rand(3, 64, 64)], img_size=size)
    assert len(two) == 2 and two[0]["boxes"].shape == (1, 4)


def test_predict_refuses_bad_arguments_in_one_line():
    model = cspnet.create_model("cspdarknet_tiny_prn", num_classes=2)
    for kwargs, message in [(dict(conf=1.5), "conf=1.5 must lie in"), (dict(img_size=100), "multiple of the detector's "
                            "stride 32"), (dict(max_det=0), "max_det=0 must be a positive integer")]:
        with pytest.raises(ValueError, match=message):
            model.predict(torch.rand(3, 64, 64), **kwargs)
    with pytest.raises(ValueError, match="a path, a PIL image or a 1- or 3-channel CHW tensor"):
        model.predict(torch.rand(5, 64, 64))
