"""``cspnet info --cfg FILE``: darknet's layer table with params and BFLOPs.

BFLOPs follow darknet: 2 x multiply-adds of the convolutional (and connected) layers at the
input size, which is what the CSPNet README and the cfg INDEX.md quote. darknet of 2019-20 also
added size^2 x C x H_out x W_out per max-pool layer to its printed total; that figure is shown too
(it is what the pytorch-branch README's detector BFLOPs are).
"""

from __future__ import annotations

import torch

from .cfg import parse_cfg
from .network import DarknetNet, build

_SHORT = {"convolutional": "conv", "maxpool": "max", "avgpool": "avg", "connected": "connected",
          "scale_channels": "scale_ch", "upsample": "upsample"}


def _whc(shape) -> str:
    c, h, w = shape
    return f"{w:4d} x{h:4d} x{c:5d}"


def summary(net: DarknetNet) -> dict:
    """Totals of a built network: params, conv/fc weights, BFLOPs, darknet's total with pooling."""
    macs = sum(i.macs for i in net.info)
    pool = sum(i.pool_ops for i in net.info)
    return {
        "layers": len(net.info),
        "params": sum(i.params for i in net.info),
        "weights": sum(i.weights for i in net.info),
        "bflops": 2 * macs / 1e9,
        "bflops_darknet": (2 * macs + pool) / 1e9,
    }


def describe(path, img_size=None) -> str:
    """The layer table, params and BFLOPs of a cfg (at ``img_size``, an int or (height, width);
    default the cfg's ``[net]`` size)."""
    cfg = parse_cfg(path)
    with torch.device("meta"):  # shapes and counts only: no memory for the weights
        net = build(cfg, img_size)
    c, h, w = net.input_shape
    lines = [
        f"cfg          {cfg.path}",
        f"input        {w} x {h} x {c}  (width x height x channels)",
        "",
        "layer  type       filters size/strd      input                 output               BFLOPs",
    ]
    for i in net.info:
        kind = _SHORT.get(i.kind, i.kind)
        bf = f"{i.bflops:9.3f}" if i.macs else ""
        row = f"{i.index:5d}  {kind:<10} {i.summary:<18} {_whc(i.in_shape)} -> {_whc(i.out_shape)} {bf}"
        lines.append(row.rstrip())
    s = summary(net)
    lines += [
        "",
        f"layers       {s['layers']}",
        f"params       {s['params']:,} ({s['params'] / 1e6:.2f} M)  conv/fc weights only: "
        f"{s['weights']:,} ({s['weights'] / 1e6:.2f} M)",
        f"BFLOPs       {s['bflops']:.3f}  (conv/fc, 2 x multiply-adds at {w} x {h})",
        f"             {s['bflops_darknet']:.3f}  (darknet's printed total: + max-pool ops)",
    ]
    for k, idx in enumerate(net.yolo_layers):
        head, info = net.layers[idx].head, net.info[idx]
        _, gh, gw = info.out_shape
        anchors = " ".join(f"{aw:g},{ah:g}" for aw, ah in head.anchors)
        stride = f"{w // gw}" if w // gw == h // gh else f"{w // gw}x{h // gh}"
        lines.append(f"{'yolo heads' if k == 0 else '':<12} layer {idx}: {gw} x {gh} grid, stride "
                     f"{stride}, {head.num_classes} classes, anchors {anchors}"
                     + (f", scale_x_y {head.scale_x_y:g}" if head.scale_x_y != 1 else ""))
    return "\n".join(lines)
