"""The README's "Ref." backbones (reconstructed): published figures, layout, feature levels."""

from functools import cache

import pytest
import torch
from torch import nn

import cspnet
from cspnet.bench.profile import profile
from cspnet.layers import DarknetMaxPool
from cspnet.models import get_config

# CSPNet README ImageNet table: conv/fc weights (M) and BFLOPs at 256, with Darknet Ref. their baseline
README = {
    "darknet_ref": (7.31, 0.965),
    "cspdensenet_ref": (3.48, 0.886),
    "cspdensenetb_ref": (1.38, 0.631),
    "csppeleenet_ref": (4.10, 1.103),
    "csppeleenetb_ref": (2.01, 0.897),
}
REFS = [n for n in README if n != "darknet_ref"]


@cache
def meta_profile(name):
    with torch.device("meta"):
        return profile(cspnet.create_model(name), 256)


@pytest.mark.parametrize("name", REFS)
def test_readme_figures_within_three_percent(name):
    weights, gflops = README[name]
    p = meta_profile(name)
    assert p.weights / 1e6 == pytest.approx(weights, rel=0.03)
    assert p.gflops == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("name", REFS)
def test_readme_deltas_against_darknet_ref(name):
    """The README's bracketed deltas are taken against Darknet Ref. (e.g. 3.48 / 7.31 = -52%)."""
    base, ours = meta_profile("darknet_ref"), meta_profile(name)
    weights, gflops = README[name]
    assert ours.weights / base.weights == pytest.approx(weights / 7.31, rel=0.03)
    assert ours.gflops / base.gflops == pytest.approx(gflops / 0.965, rel=0.03)


@pytest.mark.parametrize("name", REFS)
def test_darknet_ref_macro_layout(name):
    """Six stride-2 steps at Darknet Ref.'s places: feature levels at 2 or 4, then 4 ... 64, with
    Darknet Ref.'s widths (halved in the "b" members); each stage after the first opens with its
    2x2 max-pool; every stage is cross-stage-partial (bypass half, full fusion)."""
    with torch.device("meta"):
        m = cspnet.create_model(name)
    half = name.endswith("b_ref")
    widths = [w // 2 if half else w for w in (64, 128, 256, 512, 1024)]
    assert [f["num_chs"] for f in m.feature_info[1:]] == widths
    assert [f["reduction"] for f in m.feature_info[1:]] == [4, 8, 16, 32, 64]
    assert m.feature_info[0]["reduction"] == (4 if "pelee" in name else 2)
    assert [isinstance(s.down, DarknetMaxPool) for s in m.stages] == [
        "dense" in name, True, True, True, True
    ]
    assert all(s.fusion == "full" and s.gamma == 0.5 for s in m.stages)
    assert m.num_features == widths[-1]


@pytest.mark.parametrize("name", REFS)
def test_detector_levels_8_16_32_at_320(name):
    with torch.device("meta"):
        feats_model = cspnet.create_model(name, features_only=True, out_indices=(2, 3, 4))
        feats = feats_model(torch.empty(1, 3, 320, 320))
    assert feats_model.reductions() == [8, 16, 32]
    assert [f.shape[-1] for f in feats] == [40, 20, 10]
    assert [f.shape[1] for f in feats] == feats_model.channels()


def test_fusion_none_gives_the_single_path_dense_baseline():
    with torch.device("meta"):
        plain = cspnet.create_model("cspdensenet_ref", fusion="none")
        csp = cspnet.create_model("cspdensenet_ref")
    assert all(s.fusion == "none" and s.bypass_chs == 0 for s in plain.stages)
    assert get_config("cspdensenet_ref", fusion="none").reference is None
    # the plain stage feeds its whole input to the dense layers, the CSP stage half of it
    assert [s.blocks.in_chs for s in plain.stages] == [32, 64, 128, 256, 512]
    assert [s.blocks.in_chs for s in csp.stages] == [16, 32, 64, 128, 256]
    assert [s.bypass_chs for s in csp.stages] == [16, 32, 64, 128, 256]


def test_tiny_member_runs_and_its_bypass_is_the_pooled_input():
    torch.manual_seed(0)
    model = cspnet.create_model("cspdensenet_ref_tiny", num_classes=4, in_chans=1, fusion="last").eval()
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        stem = model.stem(x)
        out = model.stages[0](stem)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (2, 4) and a.std() > 0
    stage = model.stages[0]
    assert isinstance(stage.transition, nn.Identity)
    pooled = torch.nn.functional.max_pool2d(stem, 2, 2, ceil_mode=True)
    torch.testing.assert_close(out[:, : stage.bypass_chs], pooled[:, : stage.bypass_chs])
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(layer="sparse"), "layer='sparse'"),
        (dict(stem="resnet"), "stem='resnet'"),
        (dict(gamma=0.0), "gamma=0.0"),
        (dict(csp_stages=(0, 9)), "csp_stages"),
    ],
)
def test_bad_overrides_raise_value_error_naming_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        with torch.device("meta"):
            cspnet.create_model("cspdensenet_ref", **overrides)
