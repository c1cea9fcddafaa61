"""PeleeNet, CSPPeleeNet and the Table 1 ablations: published figures, deltas, structure, overrides."""

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cspnet
from cspnet.bench.profile import count_params, profile
from cspnet.layers import TwoWayDenseLayer
from cspnet.models import get_config


@cache
def meta_profile(name):
    with torch.device("meta"):
        model = cspnet.create_model(name)
    return profile(model, 224)


def overridden_profile(name, gamma, fusion):
    with torch.device("meta"):
        model = cspnet.create_model(name, gamma=gamma, fusion=fusion)
    return profile(model, 224)


@pytest.mark.parametrize(
    "name,weights,gflops",
    [  # CSPNet README ImageNet table (paper-tables.md); the PeleeNet rows are at 224 (architectures.md 1.2)
        ("peleenet", 2.79, 1.017),
        ("csppeleenet", 2.83, 0.888),
    ],
)
def test_readme_figures_within_the_reconstruction_tolerance(name, weights, gflops):
    p = meta_profile(name)
    assert p.weights / 1e6 == pytest.approx(weights, rel=0.03)
    assert p.gflops == pytest.approx(gflops, rel=0.03)


def test_peleenet_equals_the_official_structure_part_by_part():
    """architectures.md 1.2: weights and MACs at 224 of each part of the official PeleeNet."""
    with torch.device("meta"):
        m = cspnet.create_model("peleenet")
    parts = [m.stem, *m.stages, m.head]
    weights = [count_params(part)[1] / 1e6 for part in parts]
    assert weights == pytest.approx([0.0080, 0.0433, 0.1567, 0.8049, 1.0747, 0.7040], abs=6e-5)
    p = profile(m, 224)
    assert p.params / 1e6 == pytest.approx(2.8022, abs=1e-4)  # incl. BN (tomotana14: 2.802M)
    assert p.macs / 1e6 == pytest.approx(507.8, abs=0.05)  # paper: 508M "FLOPs"
    assert [f["num_chs"] for f in m.feature_info] == [32, 128, 256, 512, 704]
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32, 32]


def test_table1_deltas():
    """The paper's text (sec. 3.1) on the ablation, against PeleeNet's computation.

    The percentages are rounded to whole points and darknet counts a few pooling ops we do not;
    the reconstruction lands within 1.2 points of each, so 1.5 points is the band (the 3%
    absolute tolerance on 1.017 BFLOPs would be 3 points).
    """
    base = meta_profile("peleenet").gflops

    def delta(name):
        return 100 * (meta_profile(name).gflops / base - 1)

    assert delta("csppeleenet_last_g50") == pytest.approx(-21, abs=1.5)  # fusion last: -21%
    assert delta("csppeleenet_last_g25") == pytest.approx(-11, abs=1.5)  # gamma = 0.25: -11%
    assert delta("csppeleenet") == pytest.approx(-13, abs=1.5)  # final CSPPeleeNet: -13%
    assert delta("csppeleenet_full_g25") == pytest.approx(-3, abs=1.5)  # "adjust to gamma = 0.25": -3%
    # gamma is the share that bypasses: more bypass, less computation, in every fusion
    for fusion in ("first", "last", "full"):
        names = [f"csppeleenet_{fusion}_g{g}" if (fusion, g) != ("full", 50) else "csppeleenet"
                 for g in (25, 50, 75)]
        costs = [meta_profile(n).gflops for n in names]
        assert costs[0] > costs[1] > costs[2], fusion
    # Fig. 4: fusion first cuts more computation than fusion last, which cuts more than (b)
    assert delta("csppeleenet_first_g50") < delta("csppeleenet_last_g50") < delta("csppeleenet")
    # CSPPeleeNet adds parameters (+1% in the README) while it cuts computation
    assert meta_profile("csppeleenet").weights > meta_profile("peleenet").weights


@pytest.mark.parametrize("base", ["peleenet", "csppeleenet"])
@pytest.mark.parametrize("fusion", ["first", "last", "full"])
@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
def test_overrides_reach_every_registered_ablation(base, fusion, gamma):
    name = "csppeleenet" if (fusion, gamma) == ("full", 0.5) else f"csppeleenet_{fusion}_g{int(gamma * 100)}"
    assert name in cspnet.list_models("csppeleenet*")
    overridden = get_config(base, gamma=gamma, fusion=fusion)
    assert overridden.stages == get_config(name).stages
    # the CSP design covers stages 1-3; the 7x7 fourth stage stays the plain PeleeNet stage
    assert [st.fusion for st in overridden.stages] == [fusion] * 3 + ["none"]


def test_overrides_drop_the_reference_and_change_the_cost():
    assert get_config("csppeleenet", fusion="last").reference is None
    assert get_config("csppeleenet").reference.gflops == 0.888
    assert overridden_profile("peleenet", 0.5, "last").gflops == meta_profile("csppeleenet_last_g50").gflops
    assert get_config("csppeleenet", fusion="none").stages == get_config("peleenet").stages


@pytest.mark.parametrize("fusion", ["first", "last", "full"])
def test_csp_stage_computes_figure3(fusion):
    """Stage 1 of the tiny model, recomputed by hand: the first gamma share bypasses, the
    concatenation is pooled before the transition that fuses it; fusion last has no such transition."""
    torch.manual_seed(0)
    model = cspnet.create_model("csppeleenet_tiny", gamma=0.25, fusion=fusion).eval()
    stage = model.stages[0]
    x = model.stem(torch.randn(2, 3, 32, 48))
    assert stage.bypass_chs == 4  # 0.25 of the 16 stem channels
    with torch.no_grad():
        bypass, part = x[:, :4], x[:, 4:]
        part = stage.partial_transition(stage.blocks(part))
        cat = torch.cat([bypass, part], 1)
        expected = stage.transition(F.avg_pool2d(cat, 2, 2, ceil_mode=True))
        torch.testing.assert_close(stage(x), expected)
    if fusion == "last":
        assert isinstance(stage.transition, nn.Identity)
        with torch.no_grad():  # the bypass reaches the output untouched (only pooled)
            torch.testing.assert_close(stage(x)[:, :4], F.avg_pool2d(x[:, :4], 2, 2, ceil_mode=True))
    if fusion == "first":
        assert isinstance(stage.partial_transition, nn.Identity)
    if fusion == "full":
        assert not isinstance(stage.partial_transition, nn.Identity)
        assert not isinstance(stage.transition, nn.Identity)


def test_plain_stage_keeps_its_input_first_and_grows_by_the_growth_rate():
    torch.manual_seed(0)
    model = cspnet.create_model("peleenet_tiny").eval()
    stage = model.stages[2]  # 2 two-way layers, growth 16
    x = torch.randn(1, 48, 6, 10)
    with torch.no_grad():
        dense = stage.blocks(x)
    assert dense.shape == (1, 48 + 2 * 16, 6, 10)
    torch.testing.assert_close(dense[:, :48], x)
    layer = stage.blocks.layers[0]
    assert isinstance(layer, TwoWayDenseLayer)
    with torch.no_grad():
        torch.testing.assert_close(dense[:, 48:56], layer.branch1(x))  # [input, branch 1, branch 2]


@pytest.mark.parametrize("name", ["peleenet_tiny", "csppeleenet_tiny"])
def test_tiny_models_are_deterministic_and_buffered_inference_equals_concat(name):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=5, in_chans=1).eval()
    x = torch.randn(3, 1, 40, 56)
    with torch.no_grad():
        a, b = model(x), model(x)
    c = model(x)  # autograd on: the dense blocks concatenate instead of filling a buffer
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c.detach())
    assert a.shape == (3, 5) and a.std() > 0
    assert count_params(model)[0] < 300_000
    c.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_features_only_levels_on_a_non_square_input():
    model = cspnet.create_model("csppeleenet_tiny", features_only=True, out_indices=(1, 2, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert model.reductions() == [8, 16, 32]
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 12), (48, 4, 6), (80, 2, 3)]


def test_odd_input_sizes_round_up_like_the_convs():
    model = cspnet.create_model("peleenet_tiny", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 33, 45))
    assert [tuple(f.shape[2:]) for f in feats] == [(9, 12), (5, 6), (3, 3), (2, 2), (2, 2)]


@pytest.mark.parametrize(
    "name,overrides,match",
    [
        ("csppeleenet", dict(gamma=1.5), "gamma=1.5"),
        ("csppeleenet", dict(fusion="middle"), "fusion='middle'"),
        ("peleenet", dict(gamma=0.25), "gamma=0.25 has no effect on a plain stage"),
        ("csppeleenet", dict(pool_position="start"), "pool_position='start'"),
        ("csppeleenet", dict(csp_stages=(7,)), "csp_stages"),
        ("peleenet_tiny", dict(growth=15), "growth=15"),
        ("peleenet_tiny", dict(stem_chs=15), "stem_chs=15"),
        ("csppeleenet", dict(gama=0.25), "unknown option 'gama'"),
    ],
)
def test_bad_overrides_raise_value_error_naming_the_argument(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        with torch.device("meta"):
            cspnet.create_model(name, **overrides)
