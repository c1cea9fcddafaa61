"""``build(cfg)``: a parsed cfg -> :class:`DarknetNet`, with every layer's shape worked out first.

Shapes follow darknet's rules (conv: (H + 2p - k) / s + 1; maxpool: ceil(H / s); route: concat;
shortcut and sam: the previous layer's shape; scale_channels: the from-layer's shape). Anything
darknet would reject, or would run into memory it does not own, is a :class:`CfgError` naming the
cfg file, line and layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..detection.yolo_decode import YoloHead
from . import layers as L
from .cfg import REQUIRED, Cfg, Section, parse_cfg
from .errors import CfgError

# darknet activation names cspnet implements (cspnet.layers.make_act spells them the same way)
ACTIVATIONS = ("linear", "leaky", "relu", "relu6", "logistic", "swish", "mish")
MAX_PARAMS = 1_000_000_000  # more than this is a typo in a cfg, not a network
MAX_VALUES = 2**31 - 1  # darknet counts a layer's outputs in a C int

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass(frozen=True)
class LayerInfo:
    """What ``darknet`` prints for a layer, plus the counts cspnet reports."""

    index: int
    kind: str
    line: int
    sources: tuple[int, ...]
    in_shape: Shape
    out_shape: Shape
    summary: str  # filters/size/stride or the layers read
    weights: int = 0  # conv/fc weights (0 where shared)
    params: int = 0  # weights + BN shift/scale or bias
    macs: int = 0  # multiply-adds of conv/fc layers
    pool_ops: int = 0  # darknet's max-pool "FLOPs": size^2 * C * H_out * W_out

    @property
    def bflops(self) -> float:
        return 2 * self.macs / 1e9


class DarknetNet(nn.Module):
    """A darknet cfg as a PyTorch module: ``layers[i]`` is cfg layer i.

    ``forward`` returns the raw input of every ``[yolo]`` layer (a list, in cfg order; decode it
    with ``cspnet.detection.decode(outputs, net.heads, img_size)``) when the cfg has any, else the
    last layer's output. ``run(x, keep)`` returns chosen layers' outputs.
    """

    def __init__(self, cfg_path: str, input_shape: Shape, modules: list[L.DarknetLayer], info: list[LayerInfo]):
        super().__init__()
        self.cfg_path = cfg_path
        self.input_shape = input_shape
        self.layers = nn.ModuleList(modules)
        self.info = info
        self.yolo_layers = [i for i, m in enumerate(modules) if isinstance(m, L.Yolo)]
        self.header = (0, 2, 5, 0)  # major, minor, revision, seen: what save_weights writes

    @property
    def heads(self) -> list[YoloHead]:
        return [self.layers[i].head for i in self.yolo_layers]

    @property
    def num_classes(self) -> int | None:
        """The classes a detector cfg's ``[yolo]`` layers predict (None for a classifier cfg)."""
        return self.heads[0].num_classes if self.yolo_layers else None

    @property
    def img_size(self) -> int:
        """The ``[net]`` input height (the size the cfg was written for)."""
        return self.input_shape[1]

    def outputs_needed(self) -> tuple[int, ...]:
        """The layers ``forward`` returns: each [yolo] layer's input, else the last layer."""
        if self.yolo_layers:
            return tuple(self.layers[i].sources[0] for i in self.yolo_layers)
        return (len(self.layers) - 1,)

    def run(self, x: torch.Tensor, keep) -> dict[int, torch.Tensor]:
        """Outputs of the layers in ``keep`` (indices; negative counts from the end)."""
        n = len(self.layers)
        keep = {k % n if -n <= k < n else _bad_index(k, n) for k in keep}
        last_use = {}
        for i, m in enumerate(self.layers):
            for s in m.sources:
                last_use[s] = i
        outs: dict[int, torch.Tensor] = {-1: x}
        result = {}
        for i, m in enumerate(self.layers[: max(keep, default=-1) + 1]):
            y = m(*[outs[s] for s in m.sources])
            for s in set(m.sources):
                if last_use.get(s) == i and s not in keep:
                    del outs[s]
            outs[i] = y
            if i in keep:
                result[i] = y
        return result

    def forward(self, x: torch.Tensor):
        wanted = self.outputs_needed()
        got = self.run(x, wanted)
        return [got[i] for i in wanted] if self.yolo_layers else got[wanted[0]]

    def extra_repr(self) -> str:
        c, h, w = self.input_shape
        return f"cfg={self.cfg_path!r}, input={c}x{h}x{w}"


def _bad_index(k, n):
    raise ValueError(f"layer index {k} is out of range for a {n}-layer network")


def _out_size(size: int, pad: int, k: int, stride: int) -> int:
    return (size + 2 * pad - k) // stride + 1


class _Builder:
    def __init__(self, cfg: Cfg, input_shape: Shape):
        self.cfg = cfg
        self.input_shape = input_shape
        self.shapes: list[Shape] = []
        self.modules: list[L.DarknetLayer] = []
        self.info: list[LayerInfo] = []
        self.total_params = 0

    # helpers -------------------------------------------------------------------------------
    def prev(self, sec: Section) -> tuple[int, Shape]:
        i = sec.index - 1
        return i, (self.shapes[i] if i >= 0 else self.input_shape)

    def ref(self, sec: Section, key: str, value: int) -> int:
        """An absolute layer index from darknet's relative (< 0) or absolute form."""
        idx = sec.index + value if value < 0 else value
        if not 0 <= idx < sec.index:
            before = f"only layers 0..{sec.index - 1} come" if sec.index else "no layer comes"
            raise sec.error(f"{key}={value} refers to layer {idx}, but {before} before this one", key)
        return idx

    def act(self, sec: Section, default: str) -> str:
        name = sec.str("activation", default)
        if name not in ACTIVATIONS:
            raise sec.error(f"activation={name!r} is not supported; choose one of {', '.join(ACTIVATIONS)}",
                            "activation")
        return name

    def reserve(self, sec, params: int, *shapes: Shape) -> None:
        """Refuse sizes no real network has before any memory is taken for them."""
        if self.total_params + params > MAX_PARAMS:
            raise sec.error(f"the network would have {self.total_params + params:,} parameters by this layer; "
                            "is a number in the cfg wrong?")
        for shape in shapes:
            if math.prod(shape) > MAX_VALUES:
                raise sec.error(f"a {'x'.join(map(str, shape))} map has more values than darknet can index "
                                f"({MAX_VALUES:,}); is a number in the cfg wrong?")

    def add(self, sec, module, out_shape, in_shape, summary, **counts):
        if min(out_shape) < 1:
            c, h, w = out_shape
            raise sec.error(f"output would be {c}x{h}x{w} (from input {'x'.join(map(str, in_shape))}); "
                            "the input is too small for this layer")
        self.reserve(sec, counts.get("params", 0), out_shape)
        self.total_params += counts.get("params", 0)
        self.shapes.append(out_shape)
        self.modules.append(module)
        module.index = sec.index
        self.info.append(LayerInfo(sec.index, sec.kind, sec.line, module.sources, in_shape, out_shape,
                                   summary, **counts))

    # layers --------------------------------------------------------------------------------
    def convolutional(self, sec):
        p, (c, h, w) = self.prev(sec)
        filters = sec.int("filters", REQUIRED, minimum=1)
        size = sec.int("size", REQUIRED, minimum=1)
        if sec.has("stride_x") and sec.has("stride_y"):
            sx, sy = sec.int("stride_x", minimum=1), sec.int("stride_y", minimum=1)
        else:
            stride = sec.int("stride", 1, minimum=1)
            sx = sec.int("stride_x", stride, minimum=1)
            sy = sec.int("stride_y", stride, minimum=1)
        pad = size // 2 if sec.int("pad", 0) else sec.int("padding", 0, minimum=0)
        groups = sec.int("groups", 1, minimum=1)
        if c % groups or filters % groups:
            raise sec.error(f"groups={groups} must divide the input channels ({c}) and filters ({filters})",
                            "groups")
        bn = bool(sec.int("batch_normalize", 0))
        act = self.act(sec, "logistic")
        share = None
        if sec.has("share_index"):
            share = self.modules[self.ref(sec, "share_index", sec.int("share_index"))]
            if not isinstance(share, L.Convolutional):
                raise sec.error(f"share_index points to layer {share.index}, a [{share.kind}], "
                                "not a [convolutional]", "share_index")
            share = share.owner
            want = (filters, c // groups, size, size)
            if tuple(share.conv.weight.shape) != want or groups != share.groups or bn != share.batch_normalize:
                raise sec.error(f"share_index={share.index}: that layer's weights "
                                f"{tuple(share.conv.weight.shape)} (batch_normalize={int(share.batch_normalize)}) "
                                f"do not fit this one {want} (batch_normalize={int(bn)})", "share_index")
        oh, ow = _out_size(h, pad, size, sy), _out_size(w, pad, size, sx)
        weights = 0 if share else filters * (c // groups) * size * size
        params = 0 if share else weights + (2 * filters if bn else filters)
        self.reserve(sec, params, (c, h + 2 * pad, w + 2 * pad), (filters, oh, ow))
        module = L.Convolutional((p,), c, filters, size, (sy, sx), pad, groups, bn, act, share)
        stride_txt = f"{sx}" if sx == sy else f"{sx}x{sy}"
        summary = f"{filters:5d} {size:2d} x{size:2d}/{stride_txt:>2}" + (f" g{groups}" if groups > 1 else "")
        if share:
            summary += f" shares {share.index}"
        self.add(sec, module, (filters, oh, ow), (c, h, w), summary, weights=weights, params=params,
                 macs=filters * (c // groups) * size * size * oh * ow)

    def connected(self, sec):
        p, (c, h, w) = self.prev(sec)
        outputs = sec.int("output", REQUIRED, minimum=1)
        bn = bool(sec.int("batch_normalize", 0))
        inputs = c * h * w
        weights = inputs * outputs
        self.reserve(sec, weights + 2 * outputs)
        module = L.Connected((p,), inputs, outputs, bn, self.act(sec, "logistic"))
        self.add(sec, module, (outputs, 1, 1), (c, h, w), f"{inputs:5d} -> {outputs}",
                 weights=weights, params=weights + (2 * outputs if bn else outputs), macs=weights)

    def maxpool(self, sec):
        p, (c, h, w) = self.prev(sec)
        stride = sec.int("stride", 1, minimum=1)
        size = sec.int("size", stride, minimum=1)
        if sec.int("maxpool_depth", 0):
            n = sec.int("out_channels", 1, minimum=1)
            if n > c:
                raise sec.error(f"out_channels={n} is more than the {c} input channels", "out_channels")
            self.add(sec, L.MaxPool((p,), size, stride, n), (n, h, w), (c, h, w), f"depth -> {n}")
            return
        oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
        self.reserve(sec, 0, (c, h + size - 1, w + size - 1))  # the padded map the pool reads
        self.add(sec, L.MaxPool((p,), size, stride), (c, oh, ow), (c, h, w), f"      {size:2d} x{size:2d}/{stride:2d}",
                 pool_ops=size * size * c * oh * ow)

    def avgpool(self, sec):
        p, (c, h, w) = self.prev(sec)
        self.add(sec, L.AvgPool((p,)), (c, 1, 1), (c, h, w), "")

    def softmax(self, sec):
        p, shape = self.prev(sec)
        groups = sec.int("groups", 1, minimum=1)
        temperature = sec.float("temperature", 1.0)
        if math.prod(shape) % groups:
            raise sec.error(f"groups={groups} must divide the {math.prod(shape)} inputs", "groups")
        if temperature <= 0:
            raise sec.error(f"temperature={temperature} must be > 0", "temperature")
        self.add(sec, L.Softmax((p,), groups, temperature), shape, shape, "")

    def route(self, sec):
        idx = [self.ref(sec, "layers", v) for v in sec.ints("layers", REQUIRED)]
        groups = sec.int("groups", 1, minimum=1)
        group_id = sec.int("group_id", 0, minimum=0)
        if group_id >= groups:
            raise sec.error(f"group_id={group_id} must be below groups={groups}", "group_id")
        shapes = [self.shapes[i] for i in idx]
        _, h, w = shapes[0]
        for i, (c, hh, ww) in zip(idx, shapes, strict=True):
            if (hh, ww) != (h, w):
                ih, iw = self.input_shape[1:]
                raise sec.error(f"layers {idx[0]} ({h}x{w}) and {i} ({hh}x{ww}) differ in size at input "
                                f"{ih}x{iw}; a route concatenates maps of the same size", "layers")
            if c % groups:
                raise sec.error(f"groups={groups} must divide the {c} channels of layer {i}", "groups")
        out_c = sum(s[0] for s in shapes) // groups
        summary = ",".join(map(str, idx)) + (f"  {group_id}/{groups}" if groups > 1 else "")
        self.add(sec, L.Route(tuple(idx), groups, group_id), (out_c, h, w), shapes[0], summary)

    def _from(self, sec) -> int:
        values = sec.ints("from", REQUIRED)
        if len(values) != 1:
            raise sec.error(f"from={sec.str('from')!r}: cspnet reads one from-layer (darknet's weighted "
                            "multi-input shortcut is not supported)", "from")
        return self.ref(sec, "from", values[0])

    def shortcut(self, sec):
        p, shape = self.prev(sec)
        f = self._from(sec)
        c2, h2, w2 = self.shapes[f]
        _, h, w = shape
        sh, sw = -(-h2 // h), -(-w2 // w)  # cspnet.layers.partial_add's sampling stride
        if (-(-h2 // sh), -(-w2 // sw)) != (h, w):
            raise sec.error(f"cannot add layer {f} ({h2}x{w2}) to layer {p} ({h}x{w}): the from-layer must "
                            "have the same size or a whole multiple of it", "from")
        self.add(sec, L.Shortcut((p, f), self.act(sec, "linear")), shape, shape, f"from {f}")

    def sam(self, sec):
        p, shape = self.prev(sec)
        f = self._from(sec)
        if self.shapes[f] != shape:
            raise sec.error(f"layer {f} is {'x'.join(map(str, self.shapes[f]))}, layer {p} is "
                            f"{'x'.join(map(str, shape))}; [sam] multiplies maps of the same shape", "from")
        self.add(sec, L.Product((p, f), self.act(sec, "linear")), shape, shape, f"from {f}")

    def scale_channels(self, sec):
        p, (c, h, w) = self.prev(sec)
        f = self._from(sec)
        c2, h2, w2 = self.shapes[f]
        if sec.int("scale_wh", 0):
            ok, want = (c, h, w) == (1, h2, w2), f"1x{h2}x{w2}"
        else:
            ok, want = (c, h, w) == (c2, 1, 1), f"{c2}x1x1"
        if not ok:
            raise sec.error(f"the previous layer is {c}x{h}x{w}; scaling layer {f} ({c2}x{h2}x{w2}) needs {want}",
                            "from")
        module = L.Product((p, f), self.act(sec, "linear"), "scale_channels")
        self.add(sec, module, (c2, h2, w2), (c, h, w), f"from {f}")

    def upsample(self, sec):
        p, (c, h, w) = self.prev(sec)
        s = sec.int("stride", 2, minimum=1)
        self.add(sec, L.Upsample((p,), s), (c, h * s, w * s), (c, h, w), f"         x{s}")

    def dropout(self, sec):
        p, shape = self.prev(sec)
        prob = sec.float("probability", 0.2)
        if not 0 <= prob < 1:
            raise sec.error(f"probability={prob} must be in [0, 1)", "probability")
        self.add(sec, L.Dropout((p,), prob), shape, shape, f"p = {prob:.2f}")

    def reorg3d(self, sec, old=False):
        p, (c, h, w) = self.prev(sec)
        s = sec.int("stride", 1, minimum=1)
        if h % s or w % s or (old and c % (s * s)):
            what = f"{c}x{h}x{w}" if old else f"{h}x{w}"
            raise sec.error(f"stride={s} must divide the input ({what}{', channels by stride^2' if old else ''})",
                            "stride")
        self.add(sec, L.Reorg((p,), s, old), (c * s * s, h // s, w // s), (c, h, w), f"        /{s}")

    def reorg(self, sec):
        self.reorg3d(sec, old=True)

    def cost(self, sec):
        p, shape = self.prev(sec)
        self.add(sec, L.Cost((p,)), shape, shape, "")

    def yolo(self, sec):
        p, (c, h, w) = self.prev(sec)
        classes = sec.int("classes", REQUIRED, minimum=1)
        num = sec.int("num", 1, minimum=1)
        mask = sec.ints("mask", list(range(num)))
        bad = [m for m in mask if not 0 <= m < num]
        if bad:
            raise sec.error(f"mask index {bad[0]} is not among the num={num} anchors", "mask")
        anchors = sec.floats("anchors", REQUIRED)
        if len(anchors) != 2 * num:
            raise sec.error(f"anchors= has {len(anchors)} numbers; num={num} needs {2 * num} (w,h pairs)", "anchors")
        if min(anchors) <= 0:
            raise sec.error("anchors must be positive sizes in pixels", "anchors")
        scale_x_y = sec.float("scale_x_y", 1.0)
        if scale_x_y <= 0:
            raise sec.error(f"scale_x_y={scale_x_y} must be > 0", "scale_x_y")
        new_coords = sec.int("new_coords", 0)
        if new_coords not in (0, 1):
            raise sec.error(f"new_coords={new_coords} must be 0 or 1", "new_coords")
        want = len(mask) * (classes + 5)
        if c != want:
            raise sec.error(f"the previous layer has {c} channels; {len(mask)} anchors x (5 + {classes} classes) "
                            f"needs filters={want}")
        pairs = [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]
        head = YoloHead(tuple(pairs), classes, scale_x_y, bool(new_coords))
        self.add(sec, L.Yolo((p,), head), (c, h, w), (c, h, w), f"mask {','.join(map(str, mask))}")


def input_shape(cfg: Cfg, img_size=None) -> Shape:
    """(channels, height, width) from ``[net]``, or ``img_size`` (an int or (height, width))."""
    net = cfg.net
    c = net.int("channels", REQUIRED, minimum=1)
    if img_size is None:
        return c, net.int("height", REQUIRED, minimum=1), net.int("width", REQUIRED, minimum=1)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ValueError(f"img_size={img_size!r} must be a positive int or (height, width)")
    return c, h, w


def _checked_input(cfg: Cfg, img_size) -> Shape:
    shape = input_shape(cfg, img_size)
    if math.prod(shape) > MAX_VALUES:
        raise cfg.net.error(f"a {'x'.join(map(str, shape))} input has more values than darknet can index")
    return shape


def build(cfg, img_size=None) -> DarknetNet:
    """Build the network a cfg (a :class:`Cfg` or a path) describes.

    ``img_size`` (an int or (height, width)) replaces ``[net]``'s width/height for the shape checks;
    the convolutional layers run at any size their strides allow.
    """
    if not isinstance(cfg, Cfg):
        cfg = parse_cfg(cfg)
    b = _Builder(cfg, _checked_input(cfg, img_size))
    for sec in cfg.layers:
        getattr(b, sec.kind)(sec)
    return DarknetNet(cfg.path, b.input_shape, b.modules, b.info)


__all__ = ["ACTIVATIONS", "CfgError", "DarknetNet", "LayerInfo", "build", "input_shape"]
