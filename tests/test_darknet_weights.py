"""cspnet.darknet.load_weights / save_weights: darknet's .weights layout, round trips, and one
clear WeightsError for a file that does not fit its cfg."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from conftest import shared_path
from cspnet.darknet import WeightsError, build, count_weights, load_weights, parse_text, randomize, save_weights

ALL_KINDS = """[net]
width=6
height=6
channels=4

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=4
groups=2
size=1
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
share_index=0

[maxpool]
size=2
stride=2

[connected]
output=5
batch_normalize=1
activation=relu

[connected]
output=3
activation=linear

[softmax]
"""


def small_net(text=ALL_KINDS):
    return build(parse_text(text, "all.cfg"))


def test_round_trip_is_exact(tmp_path):
    net = randomize(small_net(), seed=3, calibrate=False)
    path = tmp_path / "all.weights"
    save_weights(net, path)
    # header 20 bytes; conv0: BN 4 x 4 + weights 4x4x3x3; conv1: bias 4 + weights 4x2x1x1; conv2 shares
    # conv0's; connected 16 -> 5 with BN: 5 + 80 + 3 x 5; connected 5 -> 3: 3 + 15
    n = (16 + 144) + (4 + 8) + (5 + 80 + 15) + (3 + 15)
    assert count_weights(net) == n
    assert path.stat().st_size == 20 + 4 * n
    other = small_net()
    assert load_weights(other, path) == (0, 2, 5, 0)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a, b), k
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(net.eval()(x), other.eval()(x))


def _f32(*arrays):
    return b"".join(np.asarray(a, dtype="<f4").tobytes() for a in arrays)


LAYOUT = """[net]
width=1
height=1
channels=2

[convolutional]
batch_normalize=1
filters=2
size=1
activation=linear

[convolutional]
filters=3
size=1
activation=linear

[connected]
output=2
batch_normalize=1
activation=linear
"""

FC = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # (out=2, in=3), distinct values: a dropped transpose shows


def _layout_file(path, major=0, minor=2, transposed=False, seen=1234, seen_bits=None):
    fc = np.array(FC).T if transposed else np.array(FC)  # transposed files store (in, out)
    seen_bits = seen_bits or (64 if major * 10 + minor >= 2 else 32)
    head = struct.pack("<3iq" if seen_bits == 64 else "<3ii", major, minor, 7, seen)
    body = _f32(
        [0.5, -0.5], [2.0, 3.0], [0.1, 0.2], [4.0, 9.0], [[1.0, 0.0], [0.0, 1.0]],  # conv+BN: beta gamma mean var W
        [0.25, -0.5, 0.0], [[1.0, -1.0], [0.0, 1.0], [2.0, 0.0]],  # conv with bias: bias, W
        [7.0, 8.0], fc.flatten(), [1.0, 1.0], [0.0, 0.0], [1.0, 1.0],  # connected: beta, W, gamma, mean, var
    )
    path.write_bytes(head + body)


@pytest.mark.parametrize(
    "major, minor, transposed, seen_bits",
    [(0, 2, False, None), (0, 1, False, None), (1, 0, False, None), (1001, 2, True, None),
     # pjreddie's darknet reads a 32-bit seen for a major >= 1000; AlexeyAB's rule says 64: the size decides
     (1001, 2, True, 32)],
    ids=["seen64", "seen32", "v1.0-seen64", "transposed-fc", "pjreddie-transposed-seen32"],
)
def test_darknet_layout_and_headers(tmp_path, major, minor, transposed, seen_bits):
    path = tmp_path / "layout.weights"
    _layout_file(path, major, minor, transposed, seen_bits=seen_bits)
    header = 20 if (seen_bits or (64 if major * 10 + minor >= 2 else 32)) == 64 else 16
    assert path.stat().st_size == header + 4 * (12 + 9 + 14)  # conv+BN, conv+bias, connected+BN
    net = build(parse_text(LAYOUT, "layout.cfg"))
    assert load_weights(net, path) == (major, minor, 7, 1234)
    bn = net.layers[0].bn
    assert bn.bias.tolist() == [0.5, -0.5] and bn.weight.tolist() == [2.0, 3.0]
    assert torch.allclose(bn.running_mean, torch.tensor([0.1, 0.2]))
    assert bn.running_var.tolist() == [4.0, 9.0]
    assert net.layers[1].conv.bias.tolist() == [0.25, -0.5, 0.0]
    fc = net.layers[2]
    assert fc.fc.weight.tolist() == FC and fc.bn.bias.tolist() == [7.0, 8.0]
    # x = (1, 3): BN -> (2*(1-0.1)/2 + 0.5, 3*(3-0.2)/3 - 0.5) = (1.4, 2.3); conv1 -> (1.4 - 2.3 + 0.25,
    # 2.3 - 0.5, 2 * 1.4) = (-0.65, 1.8, 2.8); connected -> (-0.65 + 3.6 + 8.4 + 7, -2.6 + 9 + 16.8 + 8)
    y = net.eval().run(torch.tensor([[[[1.0]], [[3.0]]]]), [1, 2])
    assert torch.allclose(y[1].flatten(), torch.tensor([-0.65, 1.8, 2.8]), atol=1e-6)
    assert torch.allclose(y[2].flatten(), torch.tensor([18.35, 31.2]), atol=1e-4)


@pytest.mark.parametrize("major, minor, seen_bits, needs, has", [(0, 1, 64, 156, 160), (0, 2, 32, 160, 156)],
                         ids=["v0.1-4-bytes-long", "v0.2-4-bytes-short"])
def test_only_transposed_versions_take_their_header_width_from_the_size(tmp_path, major, minor, seen_bits,
                                                                        needs, has):
    """Both forks agree on these versions' seen width: a file of the other width is 4 bytes off and
    must not load with every weight shifted by one float."""
    path = tmp_path / "layout.weights"
    _layout_file(path, major, minor, seen_bits=seen_bits)
    assert path.stat().st_size == has
    with pytest.raises(WeightsError, match=rf"layout\.cfg needs {needs} bytes|4 bytes more than layout\.cfg"):
        load_weights(build(parse_text(LAYOUT, "layout.cfg")), path)


def test_a_header_width_that_fits_neither_size_is_an_error(tmp_path):
    path = tmp_path / "layout.weights"
    _layout_file(path, 1001, 2, True, seen_bits=32)
    path.write_bytes(path.read_bytes() + b"\0" * 2)  # 158 bytes: neither 16 + 140 nor 20 + 140
    with pytest.raises(WeightsError, match=r"^\S+: the file ends inside layer 2 \[connected\] \(layout\.cfg:17\): "
                                           r"layout\.cfg needs 160 bytes, the file has 158$"):
        load_weights(build(parse_text(LAYOUT, "layout.cfg")), path)


def test_short_long_and_broken_files(tmp_path):
    net = small_net()
    good = tmp_path / "good.weights"
    save_weights(randomize(net, calibrate=False), good)
    data = good.read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[: 20 + 4 * 200])  # convs hold 172 floats: it ends in the first connected
    with pytest.raises(WeightsError) as e:
        load_weights(small_net(), short)
    msg = str(e.value)
    assert msg.startswith(f"{short}: the file ends inside layer 4 [connected] (all.cfg:35)"), msg
    assert msg.endswith(f": all.cfg needs {len(data):,} bytes, the file has {20 + 800:,}"), msg
    long = tmp_path / "long.weights"
    long.write_bytes(data + b"\0" * 6)
    with pytest.raises(WeightsError, match=r"6 bytes more than all\.cfg needs .* up to layer 5 \[connected\] "
                                           r"\(all\.cfg:40\)"):
        load_weights(small_net(), long)
    header = tmp_path / "header.weights"
    header.write_bytes(data[:14])
    with pytest.raises(WeightsError, match="14 bytes is too short for a darknet weights header"):
        load_weights(small_net(), header)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(small_net(), tmp_path / "absent.weights")
    with pytest.raises(ValueError, match="expected a network from cspnet.darknet.build"):
        load_weights(torch.nn.Linear(1, 1), good)


def test_cutoff_reads_and_writes_darknet_partial_files(tmp_path):
    net = randomize(small_net(), seed=1, calibrate=False)
    part = tmp_path / "part.weights"
    save_weights(net, part, cutoff=2)  # as `darknet partial ... 2` writes: layers 0 and 1
    assert part.stat().st_size == 20 + 4 * count_weights(net, cutoff=2)
    other = small_net()
    load_weights(other, part, cutoff=2)
    assert torch.equal(other.layers[1].conv.weight, net.layers[1].conv.weight)
    with pytest.raises(WeightsError, match="ends inside layer 4"):
        load_weights(small_net(), part)


def test_real_detector_round_trip(tmp_path):
    cfg = shared_path("reference", "darknet-cfg", "prn", "yolov3-tiny-prn.cfg")
    net = randomize(build(cfg, 64), seed=0)
    path = tmp_path / "prn.weights"
    save_weights(net, path)
    # every parameter once (4,935,182) plus the BN running mean and variance of 2,288 channels
    assert path.stat().st_size == 20 + 4 * (4_935_182 + 2 * 2_288)
    other = build(cfg, 64)
    load_weights(other, path)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(net.eval()(x), other.eval()(x), strict=True):
        assert torch.equal(a, b)
