"""Fold BatchNorm into convolutions for inference.

In eval mode a BatchNorm is a per-channel affine map, so a BN that reads a convolution's output
and nothing else can be merged into that convolution's weights and bias (exact up to float
rounding). Three patterns are folded:

- :class:`~cspnet.layers.ConvBnAct`: conv -> BN -> act, the unit of every darknet-style model;
- a pre-activation :class:`~cspnet.layers.DenseLayer` (DenseNet-BC): its second unit's BN reads
  only the first unit's conv, so it folds *backwards* into that conv;
- ``nn.Sequential`` runs of ``Conv2d`` then ``BatchNorm2d`` (a user's own blocks).

A BN that opens a pre-activation unit (:class:`~cspnet.layers.BnActConv`) and reads a
concatenation or a model input is left alone: folding it forward into the next conv is not exact
where that conv zero-pads, and it has no single producing conv to fold into.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..layers import BnActConv, ConvBnAct, DenseLayer


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Merge ``bn`` (which reads only ``conv``'s output) into ``conv`` in place."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"cannot fold {type(bn).__name__} into {type(conv).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
    conv.weight = weight
    conv.bias = bias


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            _fold(conv, bn)
            seq._modules[b] = nn.Identity()


def fuse(model: nn.Module, merge_splits: bool = False) -> nn.Module:
    """Fold every foldable BatchNorm of ``model`` into its convolution, in place.

    The model is switched to eval mode first (the fold uses the running statistics), and should
    stay there: a fused model is for inference, not for training. Returns ``model``.
    ``merge_splits=True`` also applies :func:`merge_two_conv_splits` (opt-in until its speed-up
    is measured on a quiet machine; it is exact).

    Example:
        >>> import cspnet, torch
        >>> m = cspnet.create_model("cspresnext_tiny", num_classes=10).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> y = m(x)
        >>> torch.allclose(fuse(m)(x), y, atol=1e-5)
        True
    """
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, ConvBnAct) and isinstance(module.bn, nn.BatchNorm2d):
            _fold(module.conv, module.bn)
            module.bn = nn.Identity()
        elif (
            isinstance(module, DenseLayer)
            and type(module).forward is DenseLayer.forward  # conv1's output feeds conv2 only
            and isinstance(module.conv1, BnActConv)
            and isinstance(module.conv2, BnActConv)
            and isinstance(module.conv2.bn, nn.BatchNorm2d)
        ):
            _fold(module.conv1.conv, module.conv2.bn)
            module.conv2.bn = nn.Identity()
        elif isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            _fuse_sequential(module)
    if merge_splits:
        merge_two_conv_splits(model)
    return model


def merge_two_conv_splits(model: nn.Module) -> int:
    """Fused splits: a CSP stage that splits with two 1x1 convs on the same input (darknet's
    ``split="two_conv"``) gets one conv producing both parts, then a channel slice, the
    ``split="conv"`` form. The input is read once and one kernel runs instead of two; the outputs
    are unchanged. Needs folded BatchNorms (run after :func:`fuse`). Returns the stages merged."""
    from ..csp import CrossStagePartial

    merged = 0
    for stage in model.modules():
        if not isinstance(stage, CrossStagePartial) or stage.split_mode != "two_conv":
            continue
        a, b = stage.split_bypass, stage.split_blocks
        if not (_plain_unit(a) and _plain_unit(b) and _same_conv_geometry(a.conv, b.conv)
                and type(a.act) is type(b.act) and repr(a.act) == repr(b.act)):
            continue
        weight, bias = torch.cat([a.conv.weight, b.conv.weight]), torch.cat([_bias(a.conv), _bias(b.conv)])
        del stage.split_bypass, stage.split_blocks
        stage.split = _folded_unit(a.conv, weight, bias, a.act)
        stage.split_mode = "conv"
        stage.bypass_chs = a.conv.out_channels
        merged += 1
    return merged


class SplitConv(nn.Module):
    """A folded conv unit computed as two convs over its output channels ``[:c]`` and ``[c:]``,
    returned as a tuple: the two parts a ``split="slice"`` stage would cut from its output."""

    def __init__(self, unit: ConvBnAct, c: int):
        super().__init__()
        conv = unit.conv
        self.parts = nn.ModuleList(
            _folded_unit(conv, conv.weight[rows], _bias(conv)[rows], unit.act)
            for rows in (slice(0, c), slice(c, conv.out_channels))
        )

    def forward(self, x):
        return self.parts[0](x), self.parts[1](x)


def presplit_slices(model: nn.Module) -> int:
    """Fused splits the other way round, for stages that slice their input (``split="slice"``:
    CSPPeleeNet, CSPDenseNet): the conv that produced the input (the previous stage's last
    transition, or the stem's last conv) is cut by output channels into two convs that hand the
    stage its two parts, so no channel slice is left between convs. A oneDNN Graph trace has no
    slice op: every slice ended a fused partition and cost a reorder out of oneDNN's blocked layout
    and one back in. Exact (each output channel is computed by the same weights). Needs folded
    BatchNorms (run after :func:`fuse`); only a :class:`~cspnet.models.classifier.Classifier`'s
    stem -> stage -> stage chain is rewritten, where nothing else reads the producer's output.
    The rewritten model is for tracing and inference. Returns the stages now fed pre-split input."""
    from ..csp import CrossStagePartial
    from ..models.classifier import Classifier

    if not isinstance(model, Classifier):
        return 0
    chain = [model.stem, *model.stages]
    done = 0
    for prev, stage in zip(chain, chain[1:], strict=False):
        if not (isinstance(stage, CrossStagePartial) and stage.fusion != "none" and stage.split_mode == "slice"
                and isinstance(stage.down, nn.Identity)):
            continue
        attr = getattr(prev, "output_unit", None)
        unit = getattr(prev, attr) if attr else None
        if not (_plain_unit(unit) and unit.conv.groups == 1):
            continue
        setattr(prev, attr, SplitConv(unit, stage.bypass_chs))
        done += 1
    return done


def _folded_unit(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, act: nn.Module) -> ConvBnAct:
    """A BN-free conv unit with ``like``'s geometry (groups 1) and the given weights and activation."""
    unit = ConvBnAct(like.in_channels, weight.shape[0], like.kernel_size[0], like.stride[0], bn=False, act=None,
                     padding=like.padding[0])
    unit.act = act
    with torch.no_grad():
        unit.conv.weight.copy_(weight)
        unit.conv.bias.copy_(bias)
    return unit.to(weight.device, weight.dtype)


def _plain_unit(unit) -> bool:
    return isinstance(unit, ConvBnAct) and isinstance(unit.bn, nn.Identity)


def _same_conv_geometry(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    keys = ("in_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and a.groups == b.groups == 1


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (those :func:`fuse` could not fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
