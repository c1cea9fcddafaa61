"""BatchNorm folding: exact (within 1e-5) on every family, and only where it is exact."""

import pytest
import torch
from torch import nn

import cspnet
from cspnet.inference.fuse import count_batchnorms, fuse
from cspnet.layers import BnActConv, DenseBlock

FAMILY_TINY = ["resnet_tiny", "cspresnext_tiny", "darknet_tiny", "cspdarknet_tiny", "densenet_tiny",
               "cspdensenet_tiny", "peleenet_tiny", "csppeleenet_tiny"]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a wrong fold cannot pass."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def randomized(name: str, seed: int = 0) -> nn.Module:
    """A tiny 10-class model in eval mode with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_bn(cspnet.create_model(name, num_classes=10), seed).eval()


@pytest.mark.parametrize("name", [n for n in FAMILY_TINY if n in cspnet.list_models()])
def test_fused_model_equals_eager(name):
    torch.manual_seed(0)
    model = randomize_bn(cspnet.create_model(name, num_classes=10)).eval()
    assert count_batchnorms(model) > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fused = model.fuse()
        got = fused(x)
    assert fused is model and not fused.training
    assert count_batchnorms(fused) == 0  # every unit of these families is conv -> BN -> act
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-5 * scale


def test_preactivation_dense_layer_folds_backwards_and_keeps_the_input_bn():
    """DenseNet-BC: the second unit's BN reads only the first conv, so it folds into it; the first
    BN reads the concatenation and must stay."""
    torch.manual_seed(0)
    block = randomize_bn(DenseBlock(8, 3, growth=4, bottleneck_chs=8, preact=True, new_first=False)).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        expected = block(x)
        fuse(block)
        got = block(x)
    assert count_batchnorms(block) == 3  # one input BN per layer is left
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_lone_preactivation_unit_is_left_alone():
    unit = randomize_bn(BnActConv(4, 6, 3)).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        expected = unit(x)
        fuse(unit)
        got = unit(x)
    assert count_batchnorms(unit) == 1
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_user_sequential_conv_bn_is_folded():
    seq = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = seq(x)
        got = fuse(seq)(x)
    assert count_batchnorms(seq) == 0 and seq[0].bias is not None
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_fold_uses_running_statistics_even_from_train_mode():
    model = randomize_bn(cspnet.create_model("cspresnet_tiny", num_classes=5)).train()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        got = model.train().fuse()(x)
    assert not model.training
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in ("cspdarknet_tiny", "cspresnet_tiny") if n in cspnet.list_models()])
def test_merged_two_conv_splits_are_exact(name):
    from cspnet.csp import CrossStagePartial
    from cspnet.inference.fuse import merge_two_conv_splits

    torch.manual_seed(0)
    model = randomize_bn(cspnet.create_model(name, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fuse(model)
        two_conv = sum(isinstance(m, CrossStagePartial) and m.split_mode == "two_conv" for m in model.modules())
        assert two_conv > 0 and merge_two_conv_splits(model) == two_conv
        got = model(x)
    assert not any(hasattr(m, "split_bypass") for m in model.modules())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_presplit_slices_feeds_sliced_stages_two_convs_and_is_exact():
    """The conv before each split='slice' stage is cut in two; the trace then has no slice."""
    from cspnet.inference.fuse import SplitConv, presplit_slices

    model, x = randomized("csppeleenet_tiny"), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fuse(model)
        assert "aten::slice" in str(torch.jit.trace(model, x).inlined_graph)
        assert presplit_slices(model) == 3  # the stem feeds CSP stage 1, stage 1 feeds 2, 2 feeds 3
        assert isinstance(model.stem.fuse, SplitConv) and isinstance(model.stages[1].transition, SplitConv)
        assert not isinstance(model.stages[2].transition, SplitConv)  # stage 4 is plain: no slice
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
        assert "aten::slice" not in str(torch.jit.trace(model, x).inlined_graph)


def test_presplit_slices_leaves_other_producers_alone():
    from cspnet.inference.fuse import presplit_slices

    for name in ("cspdarknet_tiny", "peleenet_tiny"):  # split by conv / no split at all
        model = fuse(cspnet.create_model(name, num_classes=10))
        assert presplit_slices(model) == 0
    # an unfolded unit (BN still there) is not cut: its output channels are not one conv's
    assert presplit_slices(cspnet.create_model("csppeleenet_tiny", num_classes=10).eval()) == 0
    # a features_only model is no Classifier chain: its stage outputs are read from outside
    assert presplit_slices(fuse(cspnet.create_model("csppeleenet_tiny", features_only=True))) == 0
