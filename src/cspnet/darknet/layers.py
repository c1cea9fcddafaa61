"""One module per darknet layer type, each computing what darknet's forward pass computes.

A module takes the outputs it reads (``sources``: absolute layer indices, the previous layer first
where darknet uses it) and returns its own output. ``darknet_tensors()`` lists a layer's tensors in
the order darknet writes them to a .weights file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..detection.yolo_decode import activate
from ..layers import DarknetMaxPool, make_act, partial_add


class DarknetLayer(nn.Module):
    """Base class: ``sources`` are the absolute indices of the layers this one reads."""

    kind = "layer"

    def __init__(self, sources: tuple[int, ...]):
        super().__init__()
        self.sources = tuple(sources)

    def darknet_tensors(self) -> list[torch.Tensor]:
        return []


class Convolutional(DarknetLayer):
    """``[convolutional]``: conv (bias only without BN) -> BN (eps 1e-5, darknet's 0.99 running
    average = momentum 0.01) -> activation. ``share`` reuses another layer's weights, as
    ``share_index=`` does; they are stored (and written to .weights) once, by that layer."""

    kind = "convolutional"

    def __init__(self, sources, in_chs, filters, size, stride, padding, groups, bn, act, share=None):
        super().__init__(sources)
        self.stride, self.padding, self.groups = stride, padding, groups
        self.batch_normalize = bn
        if share is None:
            self.conv = nn.Conv2d(in_chs, filters, size, stride, padding, groups=groups, bias=not bn)
            self.bn = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.01) if bn else None
            self.share_index = None
        else:  # not registered as a child: the weights belong to (and are saved by) the shared layer
            object.__setattr__(self, "_shared", share)
            self.share_index = share.index
        self.act = make_act(act)

    @property
    def owner(self) -> Convolutional:
        return self.__dict__.get("_shared", self)

    def forward(self, x):
        own = self.owner
        x = F.conv2d(x, own.conv.weight, own.conv.bias, self.stride, self.padding, 1, self.groups)
        if own.bn is not None:
            x = own.bn(x)
        return self.act(x)

    def darknet_tensors(self):
        if self.share_index is not None:
            return []
        if self.bn is not None:
            bn = self.bn
            return [bn.bias, bn.weight, bn.running_mean, bn.running_var, self.conv.weight]
        return [self.conv.bias, self.conv.weight]


class Connected(DarknetLayer):
    """``[connected]``: flatten (C, H, W order, as darknet stores it) -> linear -> BN -> act; the
    output is a 1x1 map. With BN darknet's bias is the BN shift, so the linear has none."""

    kind = "connected"

    def __init__(self, sources, inputs, outputs, bn, act):
        super().__init__(sources)
        self.fc = nn.Linear(inputs, outputs, bias=not bn)
        self.bn = nn.BatchNorm1d(outputs, eps=1e-5, momentum=0.01) if bn else None
        self.act = make_act(act)

    def forward(self, x):
        x = self.fc(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]

    def darknet_tensors(self):
        if self.bn is not None:
            bn = self.bn
            return [bn.bias, self.fc.weight, bn.weight, bn.running_mean, bn.running_var]
        return [self.fc.bias, self.fc.weight]


class MaxPool(DarknetLayer):
    """``[maxpool]``: spatial (darknet padding rules), or channel-wise with ``maxpool_depth=1``
    (output channel g = max over input channels g, g+N, g+2N, ...)."""

    kind = "maxpool"

    def __init__(self, sources, size, stride, depth_channels: int | None = None):
        super().__init__(sources)
        self.depth_channels = depth_channels
        self.pool = None if depth_channels else DarknetMaxPool(size, stride)

    def forward(self, x):
        if self.pool is not None:
            return self.pool(x)
        n = self.depth_channels
        b, c, h, w = x.shape
        groups = -(-c // n)
        if groups * n != c:
            x = F.pad(x, (0, 0, 0, 0, 0, groups * n - c), value=float("-inf"))
        return x.view(b, groups, n, h, w).amax(1)


class AvgPool(DarknetLayer):
    """``[avgpool]``: global average pool to a 1x1 map."""

    kind = "avgpool"

    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class Softmax(DarknetLayer):
    """``[softmax]``: softmax over all C*H*W values of a sample, split into ``groups`` equal parts."""

    kind = "softmax"

    def __init__(self, sources, groups=1, temperature=1.0):
        super().__init__(sources)
        self.groups, self.temperature = groups, temperature

    def forward(self, x):
        flat = x.reshape(x.shape[0], self.groups, -1) / self.temperature
        return flat.softmax(-1).view_as(x)


class Route(DarknetLayer):
    """``[route]``: concatenation over channels, of the ``group_id``-th of ``groups`` channel slices
    of each input."""

    kind = "route"

    def __init__(self, sources, groups=1, group_id=0):
        super().__init__(sources)
        self.groups, self.group_id = groups, group_id

    def forward(self, *xs):
        if self.groups > 1:
            xs = [x.chunk(self.groups, 1)[self.group_id] for x in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class Shortcut(DarknetLayer):
    """``[shortcut]``: the previous layer plus the from-layer (partial add: common channels, strided
    when the from-layer is larger; :func:`cspnet.layers.partial_add`), then the activation."""

    kind = "shortcut"

    def __init__(self, sources, act):
        super().__init__(sources)
        self.act = make_act(act)

    def forward(self, x, other):
        return self.act(partial_add(x, other))


class Upsample(DarknetLayer):
    """``[upsample]``: nearest-neighbour, integer factor."""

    kind = "upsample"

    def __init__(self, sources, stride):
        super().__init__(sources)
        self.stride = stride

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class Product(DarknetLayer):
    """``[sam]``: the previous layer times the from-layer (same shape), then the activation.
    ``[scale_channels]`` (squeeze-excitation) is the same product with the previous layer's
    per-channel 1x1 values (or, ``scale_wh=1``, per-position single-channel ones) broadcast over
    the from-layer's map."""

    def __init__(self, sources, act, kind: str = "sam"):
        super().__init__(sources)
        self.act = make_act(act)
        self.kind = kind

    def forward(self, x, other):
        return self.act(x * other)


class Dropout(DarknetLayer):
    """``[dropout]``: identity at inference; during training darknet's inverted dropout."""

    kind = "dropout"

    def __init__(self, sources, p):
        super().__init__(sources)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return self.drop(x)


class Reorg(DarknetLayer):
    """``[reorg3d]``: space-to-depth; output channel (dy * s + dx) * C + c holds input channel c at
    offset (dy, dx) of each s x s cell.

    ``old=True`` is ``[reorg]`` as YOLOv2 used it (darknet's ``reorg_cpu`` with ``forward=0`` on
    the input's sizes): the input's memory is read as a (C/s^2, H*s, W*s) map, space-to-depth'ed
    to (C, H, W), and that memory is returned as (C*s^2, H/s, W/s). Not a true space-to-depth, but
    what the released weights expect.
    """

    def __init__(self, sources, stride, old: bool = False):
        super().__init__(sources)
        self.stride, self.old = stride, old
        self.kind = "reorg" if old else "reorg3d"

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        if self.old:
            x = x.reshape(b, c // (s * s), h, s, w, s)
        else:
            x = x.reshape(b, c, h // s, s, w // s, s)
        return x.permute(0, 3, 5, 1, 2, 4).reshape(b, c * s * s, h // s, w // s)


class Yolo(DarknetLayer):
    """``[yolo]``: darknet's activated head (:func:`cspnet.detection.activate`). ``head`` holds
    the anchors, classes and scale_x_y; the network returns the raw input, which
    :func:`cspnet.detection.decode` turns into boxes."""

    kind = "yolo"

    def __init__(self, sources, head):
        super().__init__(sources)
        self.head = head

    def forward(self, x):
        return activate(x, self.head)


class Cost(DarknetLayer):
    """``[cost]``: a training loss; identity at inference."""

    kind = "cost"

    def forward(self, x):
        return x
