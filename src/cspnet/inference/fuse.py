"""Inference rewrites of CSP stages, on top of BatchNorm folding (:func:`cspnet.layers.fold_batchnorms`).

- :func:`fuse`: fold every BatchNorm (and, opt-in, merge darknet's two split convs into one);
- :func:`merge_two_conv_splits`: a ``split="two_conv"`` stage computes both parts with one conv;
- :func:`presplit_slices`: a ``split="slice"`` stage gets its two parts from the conv before it,
  cut in two, so a oneDNN Graph trace has no slice in it.

Each works on any model: the stages are found as :class:`~cspnet.CrossStagePartial` modules, and the
chain a stage is fed by is whatever the model (or any module in it) lists in ``feature_levels()``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..csp import CrossStagePartial
from ..layers import ConvBnAct, fold_batchnorms
from ..layers.fold import count_batchnorms


def fuse(model: nn.Module, merge_splits: bool = False) -> nn.Module:
    """Fold every foldable BatchNorm of ``model`` into its convolution, in place (eval mode; see
    :func:`cspnet.layers.fold_batchnorms`). ``merge_splits=True`` also applies
    :func:`merge_two_conv_splits` (opt-in until its speed-up is measured on a quiet machine; it is
    exact). Returns ``model``.

    Example:
        >>> import cspnet, torch
        >>> m = cspnet.create_model("cspresnext_tiny", num_classes=10).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> y = m(x)
        >>> torch.allclose(fuse(m)(x), y, atol=1e-5)
        True
    """
    fold_batchnorms(model)
    if merge_splits:
        merge_two_conv_splits(model)
    return model


def merge_two_conv_splits(model: nn.Module) -> int:
    """Fused splits: a CSP stage that splits with two 1x1 convs on the same input (darknet's
    ``split="two_conv"``) gets one conv producing both parts, then a channel slice, the
    ``split="conv"`` form. The input is read once and one kernel runs instead of two; the outputs
    are unchanged. Needs folded BatchNorms (run after :func:`fuse`). Returns the stages merged."""
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
    BatchNorms (run after :func:`fuse`).

    The chains rewritten are those that ``model`` or any module in it lists in ``feature_levels()``
    (a classifier's or a backbone's stem -> stage -> stage): each level's output feeds the next
    level alone, except the levels in the owner's ``out_indices`` (a backbone's returned features),
    which are left as they are. The rewritten model is for tracing and inference. Returns the stages
    now fed pre-split input."""
    owners = [m for m in model.modules() if callable(getattr(m, "feature_levels", None))]
    done = 0
    for owner in owners:
        chain = list(owner.feature_levels())
        exposed = set(getattr(owner, "out_indices", ()))
        for i, (prev, stage) in enumerate(zip(chain, chain[1:], strict=False)):
            if i in exposed or not (isinstance(stage, CrossStagePartial) and stage.fusion != "none"
                                    and stage.split_mode == "slice" and isinstance(stage.down, nn.Identity)):
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


__all__ = ["SplitConv", "count_batchnorms", "fuse", "merge_two_conv_splits", "presplit_slices"]
