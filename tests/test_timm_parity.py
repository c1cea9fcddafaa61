"""timm's weights load into cspnet's timm-structure models and give the same logits."""

import pytest
import torch

import cspnet
from cspnet.cli import main as cli
from cspnet.convert.timm import TIMM_MODELS, from_timm

timm = pytest.importorskip("timm", reason="timm is a test dependency (pip install -e '.[dev]')")


def random_timm(name, **kw):
    """A timm model with random weights and perturbed BatchNorm statistics, so a key mapped onto
    the wrong BN layer changes the output."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 0.6)
                m.bias.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("timm_name", list(TIMM_MODELS))
def test_timm_weights_give_the_same_logits(timm_name):
    ref = random_timm(timm_name)
    name, state = from_timm(ref.state_dict(), timm_name)
    ours = cspnet.create_model(name).eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 96, 128)  # non-square
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert expected.abs().max() > 1e-2  # a meaningful output, not all zeros
    assert (got - expected).abs().max().item() <= 1e-4


def test_from_timm_rejects_unknown_models_and_foreign_keys():
    with pytest.raises(ValueError, match="no cspnet model for timm's 'vit_base'"):
        from_timm({}, "vit_base")
    state = random_timm("cspdarknet53", num_classes=5).state_dict()
    state["stages.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="key 'stages.0.extra.weight' has no counterpart"):
        from_timm(state, "cspdarknet53")
    state = random_timm("cspdarknet53", num_classes=5).state_dict()
    del state["stages.2.conv_transition.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing key 'stages.2.transition.bn.running_var'"):
        from_timm(state, "cspdarknet53")


def test_convert_command_writes_a_self_describing_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    ref = random_timm("cspresnext50", num_classes=10)
    src = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    out = tmp_path / "ours.safetensors"
    assert cli(["convert", "--from", "timm", "cspresnext50", str(src), str(out)]) == 0
    assert "timm_cspresnext50" in capsys.readouterr().out
    model = cspnet.create_model(checkpoint=str(out)).eval()  # no name needed
    assert model.model_name == "timm_cspresnext50" and model.num_classes == 10
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-4


def test_convert_command_errors_are_one_line(tmp_path, capsys):
    missing, out = str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors")
    assert cli(["convert", "--from", "timm", "cspresnext50", missing, out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pth: no such file" in err[0]
    assert cli(["convert", "--from", "timm", "cspresnext50", "x.pth", str(tmp_path / "out.bin")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
