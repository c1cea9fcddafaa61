"""CrossStagePartial: the split, the fusions, the options, and the errors."""

import pytest
import torch
from torch import nn

from cspnet import PRESETS, ConcatStack, CrossStagePartial, cspify
from cspnet.layers import ConvBnAct


class Scale(nn.Module):
    """A 'block stack' that multiplies by a constant: makes the data flow easy to check."""

    def __init__(self, chs, factor=0.0):
        super().__init__()
        self.factor = factor
        self.out_chs = chs

    def forward(self, x):
        return x * self.factor


def conv_blocks(chs):
    return nn.Sequential(nn.Conv2d(chs, chs, 3, padding=1), nn.ReLU())


@pytest.mark.parametrize("gamma", [0.0, 1.0, -0.1, 1.5, "half", True])
def test_gamma_outside_open_interval_is_rejected(gamma):
    with pytest.raises(ValueError, match=r"gamma=.*must be in \(0, 1\)"):
        CrossStagePartial(32, 32, conv_blocks, gamma=gamma)


def test_unknown_fusion_names_the_allowed_values():
    allowed = r"fusion='middle' is not allowed; choose one of 'none', 'first', 'last', 'full'"
    with pytest.raises(ValueError, match=allowed):
        CrossStagePartial(32, 32, conv_blocks, fusion="middle")


def test_unknown_split_and_concat_are_rejected():
    with pytest.raises(ValueError, match="split='halves'"):
        CrossStagePartial(32, 32, conv_blocks, split="halves")
    with pytest.raises(ValueError, match="concat='random'"):
        CrossStagePartial(32, 32, conv_blocks, concat="random")


def test_groups_that_do_not_divide_the_channels_are_rejected():
    expected = "groups=3 must divide both in_chs=32 and out_chs=32; allowed: 1, 2, 4, 8, 16, 32$"
    with pytest.raises(ValueError, match=expected):
        CrossStagePartial(32, 64, conv_blocks, stride=2, down_groups=3)


def test_slice_split_needs_matching_hidden_width():
    with pytest.raises(ValueError, match="split='slice' needs hidden_chs"):
        CrossStagePartial(32, 64, conv_blocks, split="slice", hidden_chs=48)


@pytest.mark.parametrize("gamma,expected", [(0.25, (16, 48)), (0.5, (32, 32)), (0.75, (48, 16))])
def test_gamma_is_the_share_that_bypasses_the_blocks(gamma, expected):
    seen = {}

    def blocks(chs):
        seen["chs"] = chs
        return conv_blocks(chs)

    stage = CrossStagePartial(64, 64, blocks, gamma=gamma, split="slice")
    assert stage.split_sizes == expected
    assert seen["chs"] == expected[1]  # the blocks see the non-bypass part


def test_fusion_first_bypass_reaches_the_transition_untouched():
    torch.manual_seed(0)
    stage = CrossStagePartial(8, 6, lambda c: Scale(c, 0.0), fusion="first", split="slice", gamma=0.5).eval()
    x = torch.randn(2, 8, 5, 7)
    expected = stage.transition(torch.cat([x[:, :4], torch.zeros(2, 4, 5, 7)], 1))
    torch.testing.assert_close(stage(x), expected)


def test_fusion_last_has_no_transition_after_the_concat():
    stage = CrossStagePartial(8, 12, lambda c: Scale(c, 2.0), fusion="last", split="slice", gamma=0.5).eval()
    assert isinstance(stage.transition, nn.Identity)
    x = torch.randn(1, 8, 4, 4)
    out = stage(x)
    # bypass first: the first 4 output channels are the input's first 4, unchanged
    torch.testing.assert_close(out[:, :4], x[:, :4])
    torch.testing.assert_close(out[:, 4:], stage.partial_transition(2.0 * x[:, 4:]))


def test_fusion_full_reads_like_figure_3():
    stage = CrossStagePartial(
        8, 10, lambda c: Scale(c, -1.0), fusion="full", split="conv", concat="blocks_first"
    ).eval()
    x = torch.randn(2, 8, 6, 6)
    h = stage.split(x)
    bypass, part = h[:, :5], h[:, 5:]
    expected = stage.transition(torch.cat([stage.partial_transition(-part), bypass], 1))
    torch.testing.assert_close(stage(x), expected)


def test_fusion_none_is_the_single_path_baseline():
    stage = CrossStagePartial(8, 16, conv_blocks, fusion="none", stride=2).eval()
    assert not hasattr(stage, "split") and stage.bypass_chs == 0
    x = torch.randn(1, 8, 9, 7)
    expected = stage.transition(stage.blocks(stage.down(x)))
    torch.testing.assert_close(stage(x), expected)
    assert stage(x).shape == (1, 16, 5, 4)


def test_two_conv_split_equals_conv_split_with_the_same_weights():
    """timm's one-conv-then-slice and darknet's two convs are the same function when both parts
    share the activation (timm-facts.md): copy the weights across and compare."""
    torch.manual_seed(0)
    kw = dict(gamma=0.5, fusion="full", concat="bypass_first", act="leaky")
    a = CrossStagePartial(16, 32, conv_blocks, split="conv", **kw).eval()
    b = CrossStagePartial(16, 32, conv_blocks, split="two_conv", **kw).eval()
    with torch.no_grad():
        for m in a.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
    state = {}
    for key, value in a.state_dict().items():
        if not key.startswith("split."):
            state[key] = value
            continue
        rest = key[len("split."):]
        halves = (value, value) if value.ndim == 0 else (value[:16], value[16:])
        state[f"split_bypass.{rest}"], state[f"split_blocks.{rest}"] = halves
    b.load_state_dict(state)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(a(x), b(x))


def test_uneven_darknet_split_feeds_fewer_channels_to_widening_blocks():
    calls = {}

    def blocks(chs, in_chs=None):
        calls["args"] = (chs, in_chs)
        return nn.Conv2d(in_chs or chs, chs, 1)

    stage = CrossStagePartial(64, 256, blocks, split="two_conv", block_in_chs=64, hidden_chs=256)
    assert calls["args"] == (128, 64)
    assert stage.split_bypass.out_chs == 128 and stage.split_blocks.out_chs == 64
    assert stage(torch.randn(1, 64, 4, 4)).shape == (1, 256, 4, 4)


def test_uneven_split_needs_a_factory_that_accepts_in_chs():
    with pytest.raises(ValueError, match="make_blocks must accept in_chs="):
        CrossStagePartial(64, 256, conv_blocks, split="two_conv", block_in_chs=64)


def test_pool_before_transition_runs_the_transition_at_quarter_resolution():
    stage = CrossStagePartial(
        8, 8, lambda c: Scale(c, 1.0), split="slice", pool=nn.AvgPool2d(2), pool_position="before_transition"
    ).eval()
    x = torch.randn(1, 8, 8, 8)
    bypass, part = x[:, :4], x[:, 4:]
    expected = stage.transition(nn.functional.avg_pool2d(torch.cat([bypass, stage.partial_transition(part)], 1), 2))
    torch.testing.assert_close(stage(x), expected)


def test_preact_stage_uses_bn_act_conv_units():
    stage = CrossStagePartial(8, 8, conv_blocks, split="conv", preact=True)
    assert [type(m).__name__ for m in (stage.split, stage.partial_transition, stage.transition)] == ["BnActConv"] * 3


def test_cspify_wraps_a_user_block_and_keeps_gradients_flowing():
    class MyBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return x + torch.relu(self.conv(x))

    stage = cspify(MyBlock, 32, 64, depth=2, gamma=0.25, fusion="full", stride=2)
    # the split conv widens to out_chs=64; 75% of those go through the blocks
    assert len(stage.blocks) == 2 and stage.blocks[0].conv.in_channels == 48
    x = torch.randn(2, 32, 16, 12, requires_grad=True)
    y = stage(x)
    assert y.shape == (2, 64, 8, 6)
    y.sum().backward()
    assert stage.blocks[0].conv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_cspify_presets_reproduce_other_projects_layouts():
    c3 = cspify(lambda c: nn.Identity(), 16, 16, preset="ultralytics_c3")
    assert c3.split_mode == "two_conv" and c3.fusion == "first" and c3.concat_order == "blocks_first"
    c2f = cspify(lambda c: nn.Conv2d(c, c, 1), 16, 32, depth=3, preset="ultralytics_c2f")
    # ultralytics C2f(16, 32, n=3): 1x1 to 2 x 16, blocks on one half, concat of (2 + 3) x 16 -> 32
    assert isinstance(c2f.blocks, ConcatStack) and c2f.blocks.out_chs == 16 * 4
    assert c2f.transition.conv.in_channels == 16 * 5
    assert c2f(torch.randn(1, 16, 4, 4)).shape == (1, 32, 4, 4)
    assert set(PRESETS) >= {"darknet", "timm_cross_stage", "timm_cross_stage3", "ultralytics_c3"}
    with pytest.raises(ValueError, match="preset='yolo'"):
        cspify(lambda c: nn.Identity(), 16, 16, preset="yolo")


def test_make_blocks_must_return_a_module():
    with pytest.raises(ValueError, match="make_blocks returned int"):
        CrossStagePartial(8, 8, lambda c: 3)


def test_conv_unit_padding_and_bias_follow_darknet():
    unit = ConvBnAct(4, 8, 3, 2, bn=False, act="leaky")
    assert unit.conv.padding == (1, 1) and unit.conv.bias is not None
    x = -torch.ones(1, 4, 5, 5)
    with torch.no_grad():
        unit.conv.weight.fill_(1.0)
        unit.conv.bias.zero_()
    # the leaky slope is darknet's 0.1: the corner sees 2x2 taps of -1 over 4 channels
    assert unit(x)[0, 0, 0, 0].item() == pytest.approx(-1.6)

