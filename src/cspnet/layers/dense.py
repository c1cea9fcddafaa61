"""Dense blocks (DenseNet), in darknet's and in torchvision/timm's form.

A dense block's output is its input concatenated with every layer's new features. Concatenating
after each layer copies O(n^2) data; in inference (no autograd) the block instead writes each
layer's features into one pre-allocated buffer, and every layer reads a contiguous slice of it.
In training (``memory_efficient``, the default) autograd keeps each layer's concatenated input only
as its pieces and re-concatenates it in the backward pass, so saved memory grows linearly with
depth instead of quadratically.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import BnActConv, ConvBnAct
from .fastpath import eager_inference, tracing


class DenseLayer(nn.Module):
    """1x1 conv to ``bottleneck_chs`` then 3x3 conv to ``growth`` new channels.

    ``preact=False``: conv -> BN -> act units (darknet ``densenet201.cfg``);
    ``preact=True``: BN -> act -> conv units (DenseNet-BC as torchvision and timm build it).
    """

    def __init__(self, in_chs: int, growth: int, bottleneck_chs: int, act: str = "leaky", preact: bool = False):
        super().__init__()
        unit = BnActConv if preact else ConvBnAct
        self.conv1 = unit(in_chs, bottleneck_chs, 1, act=act)
        self.conv2 = unit(bottleneck_chs, growth, 3, act=act)
        self.out_chs = growth

    def forward(self, x):
        return self.conv2(self.conv1(x))


class DenseBlock(nn.Module):
    """``depth`` dense layers; ``out_chs = in_chs + depth * growth``.

    ``new_first=True`` orders the concatenation [newest, ..., first new, input], as darknet's
    ``[route] layers=-1,-3`` does; ``False`` is torchvision's [input, first new, ..., newest].
    ``layer_fn(in_chs)`` may replace :class:`DenseLayer` (PeleeNet's two-way layer); the layer must
    expose its number of new channels as ``out_chs``.
    """

    def __init__(
        self,
        in_chs: int,
        depth: int,
        growth: int = 32,
        bottleneck_chs: int = 128,
        act: str = "leaky",
        preact: bool = False,
        new_first: bool = True,
        layer_fn=None,
    ):
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r} must be a positive integer")
        layers, chs = [], in_chs
        for _ in range(depth):
            layer = layer_fn(chs) if layer_fn is not None else DenseLayer(chs, growth, bottleneck_chs, act, preact)
            layers.append(layer)
            chs += layer.out_chs
        self.layers = nn.ModuleList(layers)
        self.in_chs, self.out_chs, self.new_first = in_chs, chs, new_first
        self.use_buffer = True  # exporters set False to trace plain concatenations
        self.memory_efficient = True  # training: keep layer inputs as pieces, re-concatenate in backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.memory_efficient and not tracing():
            return self._forward_lean(x)
        if self.use_buffer and eager_inference():
            return self._forward_buffer(x)
        return self._forward_concat(x)

    def _forward_concat(self, x):
        for layer in self.layers:
            new = layer(x)
            x = torch.cat([new, x] if self.new_first else [x, new], dim=1)
        return x

    def _forward_lean(self, x):
        """The concatenation path with linear instead of quadratic saved memory.

        Autograd would keep every layer's concatenated input alive for the backward pass of the
        layer's first convolutions: O(depth^2) channels. Here a saved-tensor hook stores such an
        input as the list of its pieces (which are kept anyway) and re-concatenates it when the
        backward pass needs it; no convolution is recomputed, outputs and gradients are unchanged.
        """
        feats = [x]
        for layer in self.layers:
            pieces = feats[::-1] if self.new_first else list(feats)
            inp = torch.cat(pieces, dim=1)
            with torch.autograd.graph.saved_tensors_hooks(*_recat_hooks(inp, pieces)):
                new = layer(inp)
            del inp
            feats.append(new)
        return torch.cat(feats[::-1] if self.new_first else feats, dim=1)

    def _forward_buffer(self, x):
        b, c, h, w = x.shape
        out = x.new_empty(b, self.out_chs, h, w)
        if self.new_first:
            start = self.out_chs - c
            out[:, start:] = x
            for layer in self.layers:
                new = layer(out[:, start:])
                out[:, start - new.shape[1] : start] = new
                start -= new.shape[1]
        else:
            end = c
            out[:, :c] = x
            for layer in self.layers:
                new = layer(out[:, :end])
                out[:, end : end + new.shape[1]] = new
                end += new.shape[1]
        return out


class _Pieces(tuple):
    """A saved tensor stored as the tensors it was concatenated from (see DenseBlock._forward_lean)."""


def _recat_hooks(cat: torch.Tensor, pieces: list[torch.Tensor]):
    key = (cat.data_ptr(), cat.shape, cat.stride(), cat.dtype)

    def pack(t: torch.Tensor):
        if (t.data_ptr(), t.shape, t.stride(), t.dtype) == key:
            return _Pieces(pieces)
        return t

    def unpack(saved):
        return torch.cat(saved, dim=1) if isinstance(saved, _Pieces) else saved

    return pack, unpack
