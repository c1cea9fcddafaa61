"""Activations by name, as the darknet cfgs and timm spell them.

darknet's ``leaky`` has slope 0.1; timm's default ``leaky_relu`` has PyTorch's slope 0.01. Both
names are kept so a model can match either source exactly.
"""

from __future__ import annotations

from torch import nn

_FACTORIES = {
    "linear": lambda: nn.Identity(),
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "logistic": lambda: nn.Sigmoid(),
    "relu6": lambda: nn.ReLU6(inplace=True),
}

ACTIVATIONS = tuple(_FACTORIES)


def check_act(name: str | None, arg: str = "act") -> str:
    name = "linear" if name is None else name
    if name not in _FACTORIES:
        raise ValueError(f"{arg}={name!r} is not a known activation; choose one of {', '.join(ACTIVATIONS)}")
    return name


def make_act(name: str | None) -> nn.Module:
    """A fresh activation module; ``None`` and ``"linear"`` give identity."""
    return _FACTORIES[check_act(name)]()
