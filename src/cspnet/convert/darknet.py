"""darknet ``.cfg`` + ``.weights`` -> native cspnet models.

The native models register their convolutions in cfg order (stem; per stage: down conv, split convs
(bypass first), blocks, partial transition, transition; classifier last), so the mapping pairs the
i-th darknet conv (+BN) with the i-th native conv (+BN), checking every shape, and then checks that
both networks give the same logits on a random input.

Which native model a cfg is: the registered model whose convolutions have the same shapes and
activations, with the file name as a tie-breaker (``cspdarknet53`` and ``cspdarknet53_mish`` differ
in activation only). A cfg whose activation differs from every model's default (the ``icfg``
``-mish``/``-swish``/``-relu`` files) maps onto the model with ``act=`` overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..darknet.errors import CfgError
from ..darknet.layers import Connected, Convolutional, Cost, Dropout, Softmax
from ..darknet.network import DarknetNet, build
from ..darknet.weights import load_weights
from ..models import create_model, get_entry, list_models

# file-name stem -> native model (tie-breaker only; the structure decides)
NAME_HINTS = {
    "resnet50": "resnet50", "resnext50": "resnext50", "csresnet50": "cspresnet50",
    "csresnext50": "cspresnext50", "resnet10": "resnet10", "darknet53": "darknet53",
    "csdarknet53": "cspdarknet53", "csdarknet53-omega": "cspdarknet53_mish", "darknet": "darknet_ref",
    "densenet201": "densenet201",
}

_ACT_NAMES = {nn.Identity: "linear", nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Mish: "mish", nn.SiLU: "swish",
              nn.Sigmoid: "logistic"}


def _act_name(m: nn.Module | None) -> str | None:
    if m is None:
        return None
    if isinstance(m, nn.LeakyReLU):
        return "leaky" if abs(m.negative_slope - 0.1) < 1e-9 else f"leaky{m.negative_slope:g}"
    return _ACT_NAMES.get(type(m), type(m).__name__)


@dataclass
class Unit:
    """A weight layer and the BN after it: what one darknet conv/connected layer holds."""

    name: str
    layer: nn.Module  # Conv2d or Linear
    bn: nn.Module | None = None
    bn_name: str = ""
    act: str | None = None  # activation right after it, where known

    def signature(self):
        w = self.layer.weight.shape
        kernel = tuple(w[2:]) if len(w) == 4 else (1, 1)
        return (w[0], w[1], *kernel, self.bn is not None)


def native_units(model: nn.Module) -> list[Unit]:
    """Conv/Linear layers of a native model in the order a darknet cfg writes them, each with the BN
    that follows it: registration order, regrouped by the model's ``darknet_order()`` (its parts'
    names in cfg order) where it has one, as a detector does (its heads sit between neck steps)."""
    units: list[Unit] = []
    modules = dict(model.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parent = modules.get(name.rpartition(".")[0])
            act = None
            if parent is not None and getattr(parent, "conv", None) is m and isinstance(getattr(parent, "act", None),
                                                                                          nn.Module):
                act = _act_name(parent.act)
            units.append(Unit(name, m, act=act))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            last = units[-1] if units else None
            width = None if last is None else last.layer.weight.shape[0]
            if last is None or last.bn is not None or width != m.num_features:
                raise ValueError(f"native module {name} is a BatchNorm that does not follow a conv "
                                 "(pre-activation models have no darknet counterpart)")
            last.bn, last.bn_name = m, name
    order = getattr(model, "darknet_order", None)
    return _in_darknet_order(units, order()) if callable(order) else units


def _in_darknet_order(units: list[Unit], parts: list[str]) -> list[Unit]:
    def part(unit: Unit) -> int:
        for i, p in enumerate(parts):
            if unit.name == p or unit.name.startswith(p + "."):
                return i
        raise ValueError(f"native module {unit.name} is in none of the parts {parts} its model lists")

    return sorted(units, key=part)  # stable: registration order within each part


def darknet_units(net: DarknetNet) -> list[Unit]:
    units = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Convolutional) and layer.share_index is None:
            units.append(Unit(f"layer {i}", layer.conv, layer.bn, act=_act_name(layer.act)))
        elif isinstance(layer, Convolutional):
            raise ValueError(f"{net.cfg_path}: layer {i} shares weights (share_index); no native model does")
        elif isinstance(layer, Connected):
            units.append(Unit(f"layer {i}", layer.fc, layer.bn, act=_act_name(layer.act)))
    return units


def _same_structure(dk: list[Unit], nat: list[Unit], check_acts: bool) -> bool:
    if len(dk) != len(nat):
        return False
    for a, b in zip(dk, nat, strict=True):
        if a.signature() != b.signature():
            return False
        if a.bn is None and b.layer.bias is None:
            return False
        if check_acts and b.act is not None and a.act != b.act:
            return False
    return True


@dataclass
class NativeMatch:
    """The native model a cfg maps onto: ``create_model(name, num_classes=..., **overrides)``."""

    name: str
    overrides: dict = field(default_factory=dict)
    num_classes: int = 1000

    def create(self, **kw) -> nn.Module:
        return create_model(self.name, num_classes=self.num_classes, **self.overrides, **kw)


def _cfg_acts(units: list[Unit]) -> list[str]:
    return sorted({u.act for u in units if u.act not in (None, "linear")})


def _candidates(cfg_path: str, model_name: str | None, detector: bool) -> tuple[list[str], str | None]:
    """(model names to try, the preferred one): ``model_name`` alone, else the file-name hint
    first, then the zoo's detectors (for a cfg with ``[yolo]`` layers) or its classifiers."""
    if model_name is not None:
        get_entry(model_name)  # a clear error for an unknown name
        return [model_name], model_name
    stem = Path(cfg_path).stem
    hint = NAME_HINTS.get(stem, NAME_HINTS.get(stem.rsplit("-", 1)[0]))
    names = [n for n in list_models() if (get_entry(n).family == "detector") == detector]
    if hint not in names:
        return names, None
    return [hint] + [n for n in names if n != hint], hint


def _native_units(match: NativeMatch) -> list[Unit] | None:
    try:
        with torch.device("meta"):
            return native_units(match.create())
    except (ValueError, TypeError):  # the model has no such option, or no darknet-style layers
        return None


def match_native(net: DarknetNet, model_name: str | None = None) -> NativeMatch:
    """The native model (and ``act=`` override) whose convolutions match the cfg's network: the
    first with the same shapes and activations, else the first with the same shapes that takes
    the cfg's single activation as ``act=``."""
    dk = darknet_units(net)
    if not dk:
        raise ValueError(f"{net.cfg_path}: has no convolutional or connected layers to map")
    heads = net.heads
    num_classes = heads[0].num_classes if heads else dk[-1].layer.weight.shape[0]
    acts = _cfg_acts(dk)

    def with_act(name):
        match = NativeMatch(name, {"act": acts[0]}, num_classes)
        nat = _native_units(match) if len(acts) == 1 else None
        return match if nat is not None and _same_structure(dk, nat, check_acts=True) else None

    names, preferred = _candidates(net.cfg_path, model_name, detector=bool(heads))
    same_shapes = []
    for name in names:
        nat = _native_units(NativeMatch(name, {}, num_classes))
        if nat is None or not _same_structure(dk, nat, check_acts=False):
            continue
        if _same_structure(dk, nat, check_acts=True):
            return _with_heads(NativeMatch(name, {}, num_classes), heads)
        if name == preferred and (match := with_act(name)):
            return _with_heads(match, heads)
        same_shapes.append(name)
    for name in same_shapes:
        if match := with_act(name):
            return _with_heads(match, heads)
    what = f"model {model_name!r}" if model_name else "native cspnet model"
    raise ValueError(f"{net.cfg_path}: no {what} has this cfg's layers ({len(dk)} conv/fc layers, "
                     f"activations {', '.join(acts) or 'linear'}); it has no native counterpart")


def _with_heads(match: NativeMatch, heads) -> NativeMatch:
    """A detector match with the cfg's own anchors and ``scale_x_y`` where they differ from the
    native model's (the "optimal" cfgs' YOLOv4 anchors on the same layers, say)."""
    if not heads:
        return match
    with torch.device("meta"):
        model = match.create()
    if [(h.anchors, h.scale_x_y) for h in model.heads] == [(h.anchors, h.scale_x_y) for h in heads]:
        return match
    if any(h.new_coords for h in heads):
        raise ValueError("a cfg with new_coords=1 has no native counterpart (no CSPNet cfg uses it)")
    by_level = sorted(zip(model.neck.output_levels(), heads, strict=True))  # the config lists levels fine to coarse
    anchors, masks, start = [], [], 0
    for _, head in by_level:
        anchors += head.anchors
        masks.append(tuple(range(start, start + head.num_anchors)))
        start += head.num_anchors
    overrides = {"anchors": tuple(anchors), "masks": tuple(masks), "scale_x_y": tuple(h.scale_x_y for _, h in by_level)}
    return NativeMatch(match.name, {**match.overrides, **overrides}, match.num_classes)


def map_state_dict(net: DarknetNet, model: nn.Module) -> dict[str, torch.Tensor]:
    """The native ``model``'s state dict with every weight taken from ``net`` (pairing by order)."""
    dk, nat = darknet_units(net), native_units(model)
    if len(dk) != len(nat):
        raise ValueError(f"{net.cfg_path}: {len(dk)} conv/fc layers, the native model has {len(nat)}")
    state = dict(model.state_dict())
    filled = set()

    def put(key, value, target):
        state[key] = value.detach().reshape(target.shape).to(target.dtype)
        filled.add(key)

    for a, b in zip(dk, nat, strict=True):
        if a.signature() != b.signature():
            raise ValueError(f"{net.cfg_path}: {a.name} has weights {tuple(a.layer.weight.shape)}"
                             f"{' + BN' if a.bn is not None else ''}, native {b.name} has "
                             f"{tuple(b.layer.weight.shape)}{' + BN' if b.bn is not None else ''}")
        put(f"{b.name}.weight", a.layer.weight, b.layer.weight)
        if a.bn is None:
            put(f"{b.name}.bias", a.layer.bias, b.layer.bias)
        else:
            if b.layer.bias is not None:
                raise ValueError(f"native {b.name} has a bias before its BN; darknet's conv has none")
            for attr in ("weight", "bias", "running_mean", "running_var"):
                put(f"{b.bn_name}.{attr}", getattr(a.bn, attr), getattr(b.bn, attr))
    missing = [k for k, _ in model.named_parameters() if k not in filled]
    if missing:
        raise ValueError(f"{net.cfg_path}: native parameter {missing[0]} has no darknet counterpart")
    return state


def logits_layer(net: DarknetNet) -> int:
    """Index of the layer giving the logits: the last one before the trailing softmax/cost/dropout."""
    i = len(net.layers) - 1
    while i > 0 and isinstance(net.layers[i], (Softmax, Cost, Dropout)):
        i -= 1
    return i


def compare_outputs(net: DarknetNet, model: nn.Module, img_size=(64, 64), seed: int = 0) -> tuple[float, float]:
    """(largest difference between the cfg network's outputs and the native model's on a random
    input, largest absolute output): the logits of a classifier, every raw head map of a detector."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, net.input_shape[0], *img_size, generator=g)
    net.eval(), model.eval()
    with torch.no_grad():
        if net.yolo_layers:
            a, b = net(x), model(x)
        else:
            k = logits_layer(net)
            a, b = [net.run(x, [k])[k].flatten(1)], [model(x).flatten(1)]
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b, strict=True)):
        raise ValueError(f"{net.cfg_path}: the cfg network's outputs {[tuple(p.shape) for p in a]} differ in shape "
                         f"from the native model's {[tuple(q.shape) for q in b]}")
    diff = max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))
    return diff, max(float(p.abs().max()) for p in a)


def to_native_model(cfg_path, weights_path, model_name: str | None = None, verify: bool = True) -> nn.Module:
    """The native model with the darknet weights in it (``act=`` override applied, so that
    ``cspnet.checkpoint.save_checkpoint`` records it). ``verify`` compares both networks'
    logits on a random input (64x64 where the cfg allows it) and raises ValueError unless they agree
    within 1e-4 (absolute: the two run the same float32 operations in nearly the same order)."""
    with torch.device("meta"):
        net = build(cfg_path)
    net.to_empty(device="cpu")  # no initialisation: load_weights fills every weight and statistic
    load_weights(net, weights_path)
    match = match_native(net, model_name)
    model = match.create()
    model.load_state_dict(map_state_dict(net, model), strict=True)
    if verify:
        try:  # a small input where the cfg allows one: the check costs 1/16 of one at 256
            with torch.device("meta"):
                build(cfg_path, 64)
            size = (64, 64)
        except CfgError:
            size = net.input_shape[1:]
        diff, scale = compare_outputs(net, model, size)
        if not diff <= 1e-4:
            raise ValueError(f"{cfg_path}: the cfg network and native {match.name} give different outputs "
                             f"(max difference {diff:.3g}, largest logit {scale:.3g}); "
                             "they are not the same network")
    return model


def to_native(cfg_path, weights_path, model_name: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """(native model name, state dict loading with ``strict=True`` into ``create_model(name)``).

    The state dict is what :func:`to_native_model` loads; where the cfg needs ``act=`` (an ``icfg``
    ``-mish`` file), use :func:`to_native_model` or :func:`match_native` to build the model with it.
    """
    model = to_native_model(cfg_path, weights_path, model_name)
    return model.model_name, model.state_dict()
