"""Darknet interop: run the official CSPNet .cfg/.weights files and inspect them (their weights go
onto the native models with :mod:`cspnet.convert`).

    net = cspnet.darknet.build(cspnet.darknet.parse_cfg("csresnext50.cfg"))
    cspnet.darknet.load_weights(net, "csresnext50.weights")
    print(cspnet.darknet.describe("csresnext50.cfg"))
    name, state = cspnet.convert.to_native("csresnext50.cfg", "csresnext50.weights")  # onto the native model

A detector cfg's network returns its ``[yolo]`` heads' raw outputs; decode them with
``cspnet.detection.detect(outputs, net.heads, img_size)``.
"""

from .cfg import Cfg, Section, parse_cfg, parse_text
from .describe import describe, summary
from .errors import CfgError, WeightsError
from .network import DarknetNet, LayerInfo, build
from .weights import count_weights, load_weights, randomize, save_weights

__all__ = [
    "Cfg",
    "CfgError",
    "DarknetNet",
    "LayerInfo",
    "Section",
    "WeightsError",
    "build",
    "count_weights",
    "describe",
    "load_weights",
    "parse_cfg",
    "parse_text",
    "randomize",
    "save_weights",
    "summary",
]
