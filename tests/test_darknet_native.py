"""Darknet cfg + .weights -> native cspnet models: same parameters, same outputs (within 1e-4),
for every classifier cfg with a native counterpart. No real weights are reachable here, so the
.weights files are random ones written by save_weights."""

from __future__ import annotations

import pytest
import torch

from conftest import shared_path
from cspnet import create_model
from cspnet.convert import match_native, to_native, to_native_model
from cspnet.convert.darknet import logits_layer
from cspnet.darknet import build, randomize, save_weights
from test_darknet_build import one_thread  # noqa: F401  (autouse: one intra-op thread here too)

# cfg (under darknet-cfg/) -> native model and the create_model overrides it needs
PRIMARY = {
    "resnet10.cfg": ("resnet10", {}),
    "resnet50.cfg": ("resnet50", {}),
    "resnext50.cfg": ("resnext50", {}),
    "csresnet50.cfg": ("cspresnet50", {}),
    "csresnext50.cfg": ("cspresnext50", {}),
    "darknet.cfg": ("darknet_ref", {}),
    "darknet53.cfg": ("darknet53", {}),
    "csdarknet53.cfg": ("cspdarknet53", {}),
    "csdarknet53-omega.cfg": ("cspdarknet53_mish", {}),
    "alexeyab-darknet/densenet201.cfg": ("densenet201", {}),
}
ICFG = "in-progress/darknet/icfg/"
VARIANTS = {
    **{f"{ICFG}{net}-{act}.cfg": (model, {} if act == "leaky" else {"act": act})
       for net, model in (("darknet53", "darknet53"), ("densenet201", "densenet201"), ("resnet50", "resnet50"),
                          ("resnext50", "resnext50"))
       for act in ("leaky", "mish", "relu", "swish")},
    # upstream mistake (INDEX.md): resnext50-relu.cfg is byte-identical to resnext50-swish.cfg
    f"{ICFG}resnext50-relu.cfg": ("resnext50", {"act": "swish"}),
    "csresnet50-gamma.cfg": ("cspresnet50", {}),
    "csresnet50-omega.cfg": ("cspresnet50", {"act": "mish"}),
    "csresnext50-gamma.cfg": ("cspresnext50", {}),
    "csresnext50-omega.cfg": ("cspresnext50", {"act": "mish"}),
    "csdarknet53-gamma.cfg": ("cspdarknet53", {}),
}
# the heaviest networks (over 25M parameters or 300 layers) and the variants of networks checked
# anyway: deselect with -m "not slow"
SLOW = {"darknet53.cfg", "csdarknet53.cfg", "csdarknet53-omega.cfg", "alexeyab-darknet/densenet201.cfg"}


def cfg(rel):
    return shared_path("reference", "darknet-cfg", *rel.split("/"))


@pytest.mark.parametrize("rel", sorted({**PRIMARY, **VARIANTS}))
def test_cfg_maps_onto_its_native_model_with_the_same_parameter_count(rel):
    model, overrides = {**PRIMARY, **VARIANTS}[rel]
    with torch.device("meta"):
        net = build(cfg(rel))
        match = match_native(net)
        native = match.create()
    assert (match.name, match.overrides) == (model, overrides)
    assert sum(p.numel() for p in native.parameters()) == sum(p.numel() for p in net.parameters())


def _random_weights(rel, path, size=64):
    with torch.device("meta"):
        net = build(cfg(rel), size)
    net.to_empty(device="cpu")  # randomize() writes every weight and statistic
    save_weights(randomize(net, seed=7), path)
    return net


def _same_logits(net, native, x):
    k = logits_layer(net)
    with torch.no_grad():
        want = net.eval().run(x, [k])[k].flatten(1)
        got = native.eval()(x)
    assert want.abs().max() > 1  # random but not degenerate logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rel", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW else r
                                 for r in sorted(PRIMARY)]
                         + [pytest.param(r, marks=pytest.mark.slow) for r in sorted(VARIANTS)])
def test_darknet_weights_give_the_native_model_the_same_outputs(rel, tmp_path):
    path = tmp_path / "random.weights"
    net = _random_weights(rel, path)
    model, overrides = {**PRIMARY, **VARIANTS}[rel]
    name, state = to_native(cfg(rel), path)
    assert name == model
    with torch.device("meta"):
        native = create_model(name, **overrides)
    native.load_state_dict(state, strict=True, assign=True)
    _same_logits(net, native, torch.randn(1, 3, 96, 64))  # non-square, not the calibration size


def test_to_native_model_applies_the_activation_override(tmp_path):
    # resnet10.cfg with Mish: an icfg-style activation variant of a small network
    text = cfg("resnet10.cfg").read_text().replace("activation=leaky", "activation=mish")
    mish_cfg, path = tmp_path / "resnet10-mish.cfg", tmp_path / "mish.weights"
    mish_cfg.write_text(text)
    with torch.device("meta"):
        net = build(mish_cfg, 64)
    net.to_empty(device="cpu")
    save_weights(randomize(net, seed=3), path)
    model = to_native_model(mish_cfg, path)
    assert model.model_name == "resnet10" and model.cfg.act == "mish"
    assert isinstance(model.stem.conv.act, torch.nn.Mish)
    _same_logits(net, model, torch.randn(1, 3, 64, 96))


def test_the_output_check_is_absolute(tmp_path, monkeypatch):
    """1e-4 whatever the logits' size: large logits must not widen what counts as the same network."""
    import cspnet.convert.darknet as native

    path = tmp_path / "r10.weights"
    _random_weights("resnet10.cfg", path)
    monkeypatch.setattr(native, "compare_outputs", lambda *a, **k: (0.9e-4, 1000.0))
    assert to_native_model(cfg("resnet10.cfg"), path).model_name == "resnet10"
    monkeypatch.setattr(native, "compare_outputs", lambda *a, **k: (1.5e-4, 1000.0))
    with pytest.raises(ValueError, match=r"resnet10\.cfg: the cfg network and native resnet10 give different "
                                         r"outputs \(max difference 0\.00015, largest logit 1e\+03\); "):
        to_native_model(cfg("resnet10.cfg"), path)


def test_no_native_counterpart_is_a_clear_error(tmp_path):
    path = tmp_path / "r10.weights"
    _random_weights("resnet10.cfg", path)
    with pytest.raises(ValueError, match=r"resnet10\.cfg: no model 'resnet50' has this cfg's layers .* "
                                         r"it has no native counterpart"):
        to_native(cfg("resnet10.cfg"), path, "resnet50")
    with torch.device("meta"):
        net = build(cfg("enetb0.cfg"))
    with pytest.raises(ValueError, match=r"enetb0\.cfg: no native cspnet model has this cfg's layers "
                                         r"\(83 conv/fc layers, activations logistic, swish\)"):
        match_native(net)
    with pytest.raises(ValueError, match="unknown model 'resnet5'"):
        to_native(cfg("resnet10.cfg"), path, "resnet5")


def test_cli_convert_writes_a_checkpoint_that_needs_no_name(tmp_path, capsys):
    from cspnet.cli import main

    weights, out = tmp_path / "r10.weights", tmp_path / "r10.safetensors"
    net = _random_weights("resnet10.cfg", weights)
    assert main(["convert", "--from", "darknet", str(cfg("resnet10.cfg")), str(weights), str(out)]) == 0
    model = create_model(checkpoint=str(out))
    assert model.model_name == "resnet10"
    x = torch.randn(1, 3, 64, 64)
    k = logits_layer(net)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net.eval().run(x, [k])[k].flatten(1), rtol=0, atol=1e-4)
    bad = tmp_path / "short.weights"
    bad.write_bytes(weights.read_bytes()[:1000])
    assert main(["convert", "--from", "darknet", str(cfg("resnet10.cfg")), str(bad), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the file ends inside layer 0 [convolutional]" in err[0], err


def test_cli_info_cfg(capsys):
    from cspnet.cli import main

    assert main(["info", "--cfg", str(cfg("csresnext50.cfg"))]) == 0
    out = capsys.readouterr().out
    assert "20,557,480 (20.56 M)  conv/fc weights only: 20,499,136 (20.50 M)" in out
    assert "BFLOPs       7.929" in out


def test_cli_convert_keeps_the_activation_override(tmp_path):
    """A mish variant of resnet10.cfg converts to resnet10 with act='mish' recorded in the checkpoint."""
    from cspnet.cli import main

    text = cfg("resnet10.cfg").read_text().replace("activation=leaky", "activation=mish")
    mish_cfg = tmp_path / "resnet10-mish.cfg"
    mish_cfg.write_text(text)
    weights, out = tmp_path / "r10m.weights", tmp_path / "r10m.safetensors"
    net = build(str(mish_cfg))
    randomize(net, seed=1)
    save_weights(net, weights)
    assert main(["convert", "--from", "darknet", str(mish_cfg), str(weights), str(out)]) == 0
    model = create_model(checkpoint=str(out)).eval()
    assert model.model_name == "resnet10" and model.cfg.act == "mish"
    x = torch.randn(1, 3, 64, 64)
    k = logits_layer(net)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval().run(x, [k])[k].flatten(1), rtol=0, atol=1e-4)
