"""Fold BatchNorm into convolutions for inference (``model.fuse()``).

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

from .conv import BnActConv, ConvBnAct
from .dense import DenseLayer


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


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold every foldable BatchNorm of ``model`` into its convolution, in place.

    The model is switched to eval mode first (the fold uses the running statistics), and should
    stay there: a fused model is for inference, not for training. Returns ``model``.

    Example:
        >>> import cspnet, torch
        >>> m = cspnet.create_model("cspresnext_tiny", num_classes=10).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> y = m(x)
        >>> torch.allclose(fold_batchnorms(m)(x), y, atol=1e-5)
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
    return model


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (those :func:`fuse` could not fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def calibrate_batchnorms(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``model(inputs)`` (one batch, a
    cumulative average), so an untrained model's activations keep unit size through its depth in
    eval mode, as a trained model's do: what benchmarks and converter tests with random weights need
    (with BN's initial statistics they grow layer by layer until fp32 rounding decides the output).
    The model is left in eval mode. Returns ``model``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        model(inputs)
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
            bn.eval()
    return model
