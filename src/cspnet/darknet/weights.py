"""darknet .weights files: read into / write from a :class:`DarknetNet`.

Layout (darknet's ``load_weights_upto``): int32 major, minor, revision; ``seen`` as int64 when
major * 10 + minor >= 2, else int32 (AlexeyAB's rule; see :func:`read_header` for pjreddie's); then,
layer by layer in cfg order, float32 little-endian:

- ``[convolutional]`` with batch_normalize: BN shift (beta), scale (gamma), rolling mean, rolling
  variance, then the conv weights (out, in/groups, k, k); without: bias, then weights. A layer
  with ``share_index`` has none of its own.
- ``[connected]``: bias (the BN shift with batch_normalize), weights (out, in), then BN scale,
  mean, variance. Files whose major or minor version is above 1000 store the weights transposed.

Unlike darknet, which stops quietly at the end of a short file and ignores a long one, a file that
does not hold exactly what the cfg needs is a :class:`WeightsError` saying where it ends.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes
from ..layers import calibrate_batchnorms
from .errors import WeightsError, read_bytes
from .layers import Connected, Convolutional
from .network import DarknetNet

VERSION = (0, 2, 5)  # what save_weights writes: AlexeyAB darknet's current major, minor, revision


def _check_net(module) -> DarknetNet:
    if not isinstance(module, DarknetNet):
        raise ValueError(f"expected a network from cspnet.darknet.build, got {type(module).__name__}")
    return module


def _layers_upto(net: DarknetNet, cutoff: int | None):
    n = len(net.layers)
    if cutoff is None:
        cutoff = n
    if not isinstance(cutoff, int) or not 0 < cutoff <= n:
        raise ValueError(f"cutoff={cutoff!r} must be a layer count in 1..{n}")
    return list(net.layers)[:cutoff]


def header_size(major: int, minor: int) -> int:
    """Bytes before the first weight by AlexeyAB's rule: a 64-bit ``seen`` from version 0.2 on."""
    return 12 + (8 if major * 10 + minor >= 2 else 4)


def read_header(data: bytes, path, floats: int | None = None) -> tuple[int, int, int, int, int]:
    """(major, minor, revision, seen, offset of the first weight).

    The width of ``seen`` follows :func:`header_size`. The forks disagree only where major or
    minor is 1000 or more (transposed files): pjreddie's darknet reads a 32-bit ``seen`` there,
    AlexeyAB's a 64-bit one. For those versions alone, a file that holds exactly ``floats``
    weights after the other width is read with it; for every other version the width is fixed, so
    a file 4 bytes short or long stays an error rather than loading with shifted weights."""
    if len(data) < 12:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = struct.unpack("<3i", data[:12])
    offset = header_size(major, minor)
    other = 36 - offset  # 20 <-> 16
    forks_disagree = major >= 1000 or minor >= 1000
    if (forks_disagree and floats is not None and len(data) != offset + 4 * floats
            and len(data) == other + 4 * floats):
        offset = other
    if len(data) < offset:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header "
                           f"(version {major}.{minor} needs {offset})")
    seen = struct.unpack("<q" if offset == 20 else "<i", data[12:offset])[0]
    return major, minor, revision, seen, offset


def _where(net: DarknetNet, layer) -> str:
    info = net.info[layer.index]
    return f"layer {layer.index} [{info.kind}] ({net.cfg_path}:{info.line})"


def load_weights(module: DarknetNet, path, cutoff: int | None = None) -> tuple[int, int, int, int]:
    """Load a darknet .weights file into ``module`` (from :func:`build`); returns the header
    (major, minor, revision, seen). ``cutoff`` loads only layers ``0..cutoff-1``, as darknet's
    ``partial`` writes them (e.g. ``csresnext50.conv.80``); the file must then hold exactly those."""
    net = _check_net(module)
    layers = _layers_upto(net, cutoff)
    p = Path(path)
    data = read_bytes(p, "weights", WeightsError)
    major, minor, revision, seen, offset = read_header(data, p, _count(layers))
    transpose = major > 1000 or minor > 1000
    have = (len(data) - offset) // 4
    plan, need = [], 0
    for layer in layers:
        for t in layer.darknet_tensors():
            if need + t.numel() > have:
                raise WeightsError(
                    f"{p}: the file ends inside {_where(net, layer)}: {net.cfg_path} needs "
                    f"{offset + 4 * _count(layers):,} bytes, the file has {len(data):,}")
            plan.append((layer, t, need))
            need += t.numel()
    if offset + 4 * need != len(data):
        last = next((x for x in reversed(layers) if x.darknet_tensors()), layers[-1])
        raise WeightsError(
            f"{p}: {len(data) - offset - 4 * need:,} bytes more than {net.cfg_path} needs "
            f"({offset + 4 * need:,} bytes, up to {_where(net, last)}); is it the weights of another cfg?")
    floats = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=need, offset=offset).astype(np.float32))
    with torch.no_grad():
        for layer, t, start in plan:
            chunk = floats[start:start + t.numel()]
            if transpose and isinstance(layer, Connected) and t is layer.fc.weight:
                chunk = chunk.view(t.shape[1], t.shape[0]).t()
            t.copy_(chunk.reshape(t.shape))
        for layer in layers:
            if getattr(layer, "bn", None) is not None:  # a shared conv has none of its own
                layer.bn.num_batches_tracked.zero_()
    net.header = (major, minor, revision, seen)
    return net.header


def _count(layers) -> int:
    return sum(t.numel() for layer in layers for t in layer.darknet_tensors())


def save_weights(module: DarknetNet, path, cutoff: int | None = None) -> None:
    """Write ``module``'s weights as darknet does (version 0.2.5, ``seen`` from the loaded header),
    atomically. ``cutoff`` writes only layers ``0..cutoff-1`` (darknet's ``partial``)."""
    net = _check_net(module)
    layers = _layers_upto(net, cutoff)
    seen = int(net.header[3]) if len(net.header) > 3 else 0
    parts = [struct.pack("<3iq", *VERSION, seen)]
    for layer in layers:
        for t in layer.darknet_tensors():
            parts.append(t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
    atomic_write_bytes(path, b"".join(parts))


def count_weights(module: DarknetNet, cutoff: int | None = None) -> int:
    """Number of float32 values the .weights file of ``module`` holds after its header."""
    return _count(_layers_upto(_check_net(module), cutoff))


def randomize(module: DarknetNet, seed: int = 0, calibrate: bool = True) -> DarknetNet:
    """Fill every weight with random values, for testing converters and loaders without real
    weights: He-normal convs, BN scale in [0.5, 1.5] and shift near 0. ``calibrate`` then sets the
    BN running statistics from a batch of random inputs of the network's input size (so activations
    stay near unit size through deep networks, as in a trained one; build with a small ``img_size``
    to make that fast); otherwise they are random too."""
    net = _check_net(module)
    g = torch.Generator().manual_seed(seed)
    bns = []
    with torch.no_grad():
        for layer in net.layers:
            if not layer.darknet_tensors():
                continue
            weight = (layer.conv if isinstance(layer, Convolutional) else layer.fc).weight
            weight.normal_(0.0, (2.0 / weight[0].numel()) ** 0.5, generator=g)
            if layer.bn is None:
                bias = (layer.conv if isinstance(layer, Convolutional) else layer.fc).bias
                bias.normal_(0.0, 0.1, generator=g)
                continue
            bn = layer.bn
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0.0, 0.1, generator=g)
            bn.running_mean.normal_(0.0, 0.1, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.num_batches_tracked.zero_()
            bns.append(bn)
    if calibrate and bns:
        training = net.training
        calibrate_batchnorms(net, torch.randn(2, *net.input_shape, generator=g))
        net.train(training)
    return net
