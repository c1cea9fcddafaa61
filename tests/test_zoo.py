"""The model zoo: reference figures, the timm-style API, overrides and feature levels."""

import json

import pytest
import torch

import cspnet
from cspnet.bench.profile import profile
from cspnet.cli import main as cli
from cspnet.models import get_config, get_entry
from cspnet.models.config import from_dict, to_dict

WITH_REFERENCE = [n for n in cspnet.list_models() if getattr(get_entry(n).cfg, "reference", None) is not None]
TINY = [n for n in cspnet.list_models("*tiny") if get_entry(n).family != "detector"]  # the classifiers


def meta_model(name, **kw):
    with torch.device("meta"):
        return cspnet.create_model(name, **kw)


def test_every_paper_model_with_a_cfg_is_registered():
    names = set(cspnet.list_models())
    assert {"resnet50", "cspresnet50", "resnext50", "cspresnext50", "darknet53", "cspdarknet53",
            "cspdarknet53_mish", "densenet201", "cspdensenet201", "resnet10", "darknet_ref"} <= names
    timm_structures = {"timm_resnet50", "timm_resnext50_32x4d", "timm_densenet201", "timm_darknet53",
                       "timm_cspresnet50", "timm_cspresnext50", "timm_cspdarknet53"}
    assert timm_structures <= names


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_params_and_gflops_match_the_reference(name):
    ref = get_entry(name).cfg.reference
    p = profile(meta_model(name), ref.img_size)
    if ref.params is not None:
        assert p.params / 1e6 == pytest.approx(ref.params, rel=ref.tolerance), "params (conv + BN)"
    if ref.weights is not None:
        assert p.weights / 1e6 == pytest.approx(ref.weights, rel=ref.tolerance), "conv/fc weights"
    assert p.gflops == pytest.approx(ref.gflops, rel=ref.tolerance), f"GFLOPs @ {ref.img_size}"


@pytest.mark.parametrize(
    "name,params,weights,gflops",
    [  # darknet-cfg/INDEX.md cross-check table, held here independently of the configs
        ("resnet50", 22.78, 22.73, 9.999),
        ("resnext50", 22.25, 22.19, 10.110),
        ("cspresnet50", 21.61, 21.57, 8.967),
        ("cspresnext50", 20.56, 20.50, 7.929),
        ("darknet53", 41.61, 41.57, 18.570),
        ("cspdarknet53", 27.64, 27.61, 13.067),
        ("resnet10", 5.24, 5.24, 2.272),
        ("darknet_ref", 7.32, 7.31, 0.965),
        ("densenet201", 17.17, 17.14, 10.848),
    ],
)
def test_cfg_models_equal_the_index_cross_check(name, params, weights, gflops):
    p = profile(meta_model(name), 256)
    assert p.params / 1e6 == pytest.approx(params, rel=0.005)
    assert p.weights / 1e6 == pytest.approx(weights, rel=0.005)
    assert p.gflops == pytest.approx(gflops, rel=0.005)


@pytest.mark.parametrize(
    "ours,timm_params",
    [  # timm's parameter counts (timm-facts.md, timm 1.0 create_model)
        ("timm_resnet50", 25_557_032), ("timm_resnext50_32x4d", 25_028_904), ("timm_densenet201", 20_013_928),
        ("timm_darknet53", 41_609_928), ("timm_cspresnet50", 21_616_168), ("timm_cspresnext50", 20_569_896),
        ("timm_cspdarknet53", 27_642_184),
    ],
)
def test_timm_structures_have_timms_parameter_count(ours, timm_params):
    assert profile(meta_model(ours), 64).params == timm_params


def test_csp_cuts_computation_against_its_baseline():
    """The paper's claim, on the cfg models: CSP costs fewer FLOPs than the baseline."""
    for base, csp in [("resnext50", "cspresnext50"), ("darknet53", "cspdarknet53"), ("densenet201", "cspdensenet201")]:
        assert profile(meta_model(csp), 256).gflops < profile(meta_model(base), 256).gflops


def test_list_models_filters_with_a_pattern():
    assert cspnet.list_models("cspres*") == ["cspresnet50", "cspresnet50_panet_spp", "cspresnet_tiny", "cspresnext50",
                                             "cspresnext50_panet_spp", "cspresnext_tiny", "cspresnext_tiny_panet"]
    assert cspnet.list_models("nothing-like-this*") == []


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'cspresnet5'; did you mean cspresnet50"):
        cspnet.create_model("cspresnet5")


def test_overrides_change_the_architecture_and_drop_the_reference():
    cfg = get_config("cspresnext50", gamma=0.25)
    assert all(st.gamma == 0.25 for st in cfg.stages) and cfg.reference is None
    base, quarter = profile(meta_model("cspresnext50"), 256), profile(meta_model("cspresnext50", gamma=0.25), 256)
    assert quarter.gflops > base.gflops  # a quarter bypasses: more channels go through the blocks
    assert get_config("cspdarknet53", act="mish").act == "mish"
    with pytest.raises(ValueError, match="unknown option 'gama'"):
        cspnet.create_model("cspresnext50", gama=0.3)
    with pytest.raises(ValueError, match="gamma=1.0 must be in"):
        cspnet.create_model("cspresnet_tiny", gamma=1.0)


def test_fusion_none_gives_the_single_path_baseline_of_a_csp_model():
    base = cspnet.create_model("cspdarknet_tiny", fusion="none")
    assert all(stage.fusion == "none" for stage in base.stages)
    assert profile(base, 64).params != profile(cspnet.create_model("cspdarknet_tiny"), 64).params


def test_cspdarknet53_mish_is_the_omega_cfg():
    m = meta_model("cspdarknet53_mish")
    assert any(isinstance(x, torch.nn.Mish) for x in m.modules())
    assert not any(isinstance(x, torch.nn.LeakyReLU) for x in m.modules())


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_run_on_non_square_input_in_any_channel_count(name):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert pooled.shape == (2, model.num_features)
    assert profile(model, 64).params < 1_000_000


@pytest.mark.parametrize("name", TINY)
def test_feature_info_matches_the_feature_maps(name):
    feats_model = cspnet.create_model(name, features_only=True)
    x = torch.randn(1, 3, 64, 64)
    feats = feats_model(x)
    assert len(feats) == len(feats_model.feature_info)
    for f, info in zip(feats, feats_model.feature_info, strict=True):
        assert f.shape[1] == info["num_chs"]
        assert 64 / f.shape[-1] == info["reduction"], info["module"]


def test_out_indices_select_levels_and_bad_indices_are_rejected():
    m = cspnet.create_model("cspresnet_tiny", features_only=True, out_indices=(2, 4))
    feats = m(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == m.channels() and m.reductions() == [8, 32]
    with pytest.raises(ValueError, match="out_indices"):
        cspnet.create_model("cspresnet_tiny", features_only=True, out_indices=(7,))


def test_reset_classifier_and_headless_models():
    m = cspnet.create_model("cspdarknet_tiny").eval()
    m.reset_classifier(3)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, m.num_features)
    with pytest.raises(ValueError, match="num_classes=-1"):
        m.reset_classifier(-1)


def test_fc_first_head_equals_pool_then_fc():
    """resnet50.cfg applies its classifier conv before the pool: same logits, more FLOPs."""
    torch.manual_seed(0)
    m = cspnet.create_model("resnet_tiny", fc_first=True, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = m.forward_features(x)
    w, b = m.head.fc.weight[:, :, 0, 0], m.head.fc.bias
    torch.testing.assert_close(m(x), feats.mean((2, 3)) @ w.T + b)


@pytest.mark.parametrize("name", cspnet.list_models())
def test_configs_round_trip_through_json(name):
    cfg = get_entry(name).cfg
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_cli_info_prints_params_gflops_and_levels(capsys):
    assert cli(["info", "cspresnext50"]) == 0
    out = capsys.readouterr().out
    assert "params       20.557 M" in out and "GFLOPs       7.929" in out
    assert "2048      32  stages.3" in out


def test_cli_list_and_bad_model_are_one_liners(capsys):
    assert cli(["list", "cspdark*"]) == 0
    assert capsys.readouterr().out.split()[0] == "cspdarknet53"
    assert cli(["info", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cspnet info: error: unknown model 'nope'")


@pytest.mark.parametrize("argv", [["info", "cspresnext50", "--img-size", "-3"], ["info", "--img-size", "x", "resnet10"],
                                  ["frobnicate"]])
def test_cli_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]


def test_zoo_table_lists_every_registered_model():
    """benchmarks/zoo.md is the zoo's published table: a model registered since it was written is missing."""
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.md").read_text()
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    missing = sorted(set(cspnet.list_models()) - rows)
    assert not missing, f"benchmarks/zoo.md lacks {missing}; rerun python benchmarks/zoo.py"


@pytest.mark.parametrize("gamma,splits", [
    # the block part rounds to whole groups of 32 (nearest, at least one group, one bypass channel)
    (0.3, [(64, 192), (160, 352), (320, 704), (608, 1440)]),  # 256 * 0.7 = 179.2 -> 192
    (0.01, [(32, 224), (32, 480), (32, 992), (32, 2016)]),
    (0.99, [(224, 32), (480, 32), (992, 32), (2016, 32)]),
])
def test_any_gamma_builds_on_grouped_models(gamma, splits):
    m = meta_model("cspresnext50", gamma=gamma)
    assert [s.split_sizes for s in m.stages] == splits
    assert [s.gamma for s in m.stages] == [b / (b + p) for b, p in splits]  # the gamma each stage runs at


def test_the_papers_gammas_are_not_rounded_on_grouped_models():
    for gamma, splits in [(0.5, [(128, 128), (256, 256), (512, 512), (1024, 1024)]),
                          (0.25, [(64, 192), (128, 384), (256, 768), (512, 1536)])]:
        m = meta_model("timm_cspresnext50", gamma=gamma)
        assert [s.split_sizes for s in m.stages] == splits and {s.gamma for s in m.stages} == {gamma}


def test_a_grouped_stage_too_narrow_for_any_split_names_gamma_and_groups():
    with pytest.raises(ValueError) as e:
        cspnet.create_model("cspresnext_tiny", groups=32, gamma=0.3)
    assert str(e.value) == ("stage 0: gamma=0.3 cannot split 32 channels into a bypass and whole groups of 32: "
                            "with groups=32 a stage needs at least 33 channels")


@pytest.mark.parametrize("size", ["1", "3", "15"])
def test_cli_info_rejects_inputs_under_the_shared_minimum(size, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's refusal
        cli(["info", "cspresnext50", "--img-size", size])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cspnet info: error: argument --img-size: '{size}' must be at least 16 and at most 4096 "
                   "(input sizes are 16 to 4096 px for every command; detectors also need a multiple of their "
                   "stride) (see cspnet info --help)"]


def test_cli_info_accepts_odd_sizes_from_the_stride_up(capsys):
    assert cli(["info", "cspresnext_tiny", "--img-size", "33"]) == 0
    assert "input        3x33x33" in capsys.readouterr().out


def test_cli_convert_reports_an_unknown_timm_name_before_the_files(tmp_path, capsys):
    assert cli(["convert", "--from", "timm", "nope", str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cspnet convert: error: no cspnet model for timm's 'nope'; supported: ")


@pytest.mark.parametrize("argv", [["list"], ["info", "cspresnext_tiny"]])
def test_cli_ends_quietly_when_the_reader_closes_the_pipe(argv):
    """`cspnet list | head -1`: the read end is closed before the first write, so every write fails."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "cspnet", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""
