"""cspnet.darknet.build: darknet's layer semantics and shape rules, the released cfgs, and their
params/BFLOPs against the figures INDEX.md recomputed from them."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from cspnet.darknet import CfgError, build, describe, parse_text, summary
from cspnet.layers import partial_add


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: with `pytest -n 2` on two busy cores, more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def net_from(body: str, c=4, h=8, w=8, path="t.cfg"):
    return build(parse_text(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n\n{body}", path))


def conv(filters, size=1, stride=1, act="linear", bn=0, extra=""):
    return (f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n{extra}\n")


def cfg_dir():
    return shared_path("reference", "darknet-cfg")


# ---------------------------------------------------------------------------------------------
# layer semantics on small synthetic cfgs


def test_route_groups_take_the_group_id_slice_of_each_input():
    net = net_from(conv(6) + conv(4) + "[route]\nlayers=-2,-1\ngroups=2\ngroup_id=1\n")
    x = torch.randn(2, 4, 8, 8)
    out = net.run(x, [0, 1, 2])
    want = torch.cat([out[0][:, 3:], out[1][:, 2:]], 1)
    assert net.info[2].out_shape == (5, 8, 8)
    assert torch.equal(out[2], want)


def test_shortcut_is_the_partial_add_and_keeps_the_previous_shape():
    # layer 1 (8 ch, 4x4) gets layer 0 (6 ch, 8x8) added into its first 6 channels, sampled with stride 2
    net = net_from(conv(6) + conv(8, 3, 2) + "[shortcut]\nfrom=-2\nactivation=leaky\n")
    x = torch.randn(1, 4, 8, 8)
    out = net.run(x, [0, 1, 2])
    assert net.info[2].out_shape == (8, 4, 4)
    assert torch.allclose(out[2], F.leaky_relu(partial_add(out[1], out[0]), 0.1))
    assert torch.allclose(out[2][:, 6:], F.leaky_relu(out[1][:, 6:], 0.1))
    assert torch.allclose(out[2][:, :6], F.leaky_relu(out[1][:, :6] + out[0][:, :, ::2, ::2], 0.1))


def test_maxpool_darknet_padding_and_channel_maxout():
    net = net_from("[maxpool]\nsize=2\nstride=1\n[maxpool]\nsize=3\nstride=2\n", h=5, w=5)
    assert [i.out_shape for i in net.info] == [(4, 5, 5), (4, 3, 3)]
    x = torch.randn(1, 4, 5, 5)
    out = net.run(x, [0, 1])
    want0 = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)  # right/bottom padding
    assert torch.equal(out[0], want0)
    assert torch.equal(out[1], F.max_pool2d(out[0], 3, 2, 1))
    # maxpool_depth: output channel g = max over input channels g, g + N, ... (architectures.md 0)
    net = net_from("[maxpool]\nmaxpool_depth=1\nout_channels=2\n", c=6)
    x = torch.randn(1, 6, 8, 8)
    want = torch.stack([x[:, 0::2].amax(1), x[:, 1::2].amax(1)], 1)
    assert torch.equal(net(x), want)


def _reorg_cpu(x, w, h, c, stride, forward):
    """darknet's reorg_cpu, index for index, for one sample stored as a flat list."""
    out = [0.0] * len(x)
    out_c = c // (stride * stride)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % out_c, k // out_c
                w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                out_index = w2 + w * stride * (h2 + h * stride * c2)
                if forward:
                    out[out_index] = x[in_index]
                else:
                    out[in_index] = x[out_index]
    return out


def test_reorg_matches_darknet_reorg_cpu():
    x = torch.arange(8 * 4 * 6, dtype=torch.float32).view(1, 8, 4, 6)
    flat = x.flatten().tolist()
    old = net_from("[reorg]\nstride=2\n", c=8, h=4, w=6)  # YOLOv2's: reorg_cpu(in, w, h, c, 0)
    want = torch.tensor(_reorg_cpu(flat, 6, 4, 8, 2, False)).view(1, 32, 2, 3)
    assert torch.equal(old(x), want)
    new = net_from("[reorg3d]\nstride=2\n", c=8, h=4, w=6)  # reorg_cpu(in, out_w, out_h, out_c, 0)
    want = torch.tensor(_reorg_cpu(flat, 3, 2, 32, 2, False)).view(1, 32, 2, 3)
    assert torch.equal(new(x), want)


def test_upsample_scale_channels_sam_softmax_dropout():
    net = net_from(
        conv(4) + "[avgpool]\n" + conv(4, act="logistic") + "[scale_channels]\nfrom=-3\n"  # 0-3: SE
        + conv(4, act="logistic") + "[sam]\nfrom=-2\n"  # 4-5
        + "[upsample]\nstride=2\n[dropout]\nprobability=.5\n[softmax]\ngroups=2\n"  # 6-8
    ).eval()
    x = torch.randn(2, 4, 8, 8)
    o = net.run(x, range(9))
    assert torch.allclose(o[3], o[0] * o[2])  # per-channel scale of layer 0
    assert torch.allclose(o[5], o[3] * o[4])
    assert torch.equal(o[6], o[5].repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(o[7], o[6])  # dropout is the identity at inference
    sums = o[8].reshape(2, 2, -1).sum(-1)
    assert torch.allclose(sums, torch.ones(2, 2))
    assert torch.allclose(o[8].reshape(2, 2, -1), o[7].reshape(2, 2, -1).softmax(-1))


def test_connected_flattens_in_darknet_order():
    net = net_from(conv(2) + "[connected]\noutput=5\nactivation=linear\n", h=3, w=3).eval()
    fc = net.layers[1].fc
    x = torch.randn(2, 4, 3, 3)
    o = net.run(x, [0, 1])
    assert net.info[1].out_shape == (5, 1, 1)
    assert torch.allclose(o[1].flatten(1), o[0].flatten(1) @ fc.weight.t() + fc.bias)


def test_conv_strides_groups_and_default_activation():
    net = net_from("[convolutional]\nfilters=4\nsize=3\nstride_x=1\nstride_y=2\npad=1\ngroups=2\n", h=9, w=9)
    assert net.info[0].out_shape == (4, 5, 9)
    assert isinstance(net.layers[0].act, torch.nn.Sigmoid)  # darknet's default activation is logistic
    assert net.info[0].weights == 4 * 2 * 9 and net.info[0].params == 4 * 2 * 9 + 4


def test_share_index_reuses_weights_and_counts_them_once():
    net = net_from(conv(4, 3, bn=1) + conv(4, 3, bn=1, extra="share_index=0"))
    assert net.layers[1].owner is net.layers[0]
    assert sum(p.numel() for p in net.parameters()) == net.info[0].params and net.info[1].params == 0
    assert net.layers[1].darknet_tensors() == []
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(net.eval()(x), net.layers[0](net.layers[0](x)))


# ---------------------------------------------------------------------------------------------
# bad cfgs: one CfgError line naming the file, line and layer


@pytest.mark.parametrize(
    "body, where, words",
    [
        (conv(4) + "[route]\nlayers=-1,3\n", "t.cfg:15: layer 1 [route]", "layers=3 refers to layer 3"),
        (conv(4) + "[route]\nlayers=-5\n", "t.cfg:15: layer 1 [route]", "layers=-5 refers to layer -4"),
        (conv(4) + "[shortcut]\nfrom=-9\n", "t.cfg:15: layer 1 [shortcut]", "only layers 0..0 come before"),
        ("[route]\nlayers=0\n", "t.cfg:7: layer 0 [route]", "refers to layer 0, but no layer comes before"),
        ("[convolutional]\nsize=3\n", "t.cfg:6: layer 0 [convolutional]", "missing option filters="),
        (conv(4) + "[route]\n", "t.cfg:14: layer 1 [route]", "missing option layers="),
        (conv(4, act="tanh"), "t.cfg:12: layer 0 [convolutional]", "activation='tanh' is not supported"),
        (conv(6, extra="groups=4"), "t.cfg:13: layer 0 [convolutional]", "groups=4 must divide"),
        ("[convolutional]\nfilters=4\nsize=9\n", "t.cfg:6: layer 0 [convolutional]", "output would be 4x0x0"),
        (conv(4) + "[yolo]\nclasses=1\nanchors=1,2\n", "t.cfg:14: layer 1 [yolo]", "needs filters=6"),
        (conv(12) + "[yolo]\nclasses=1\nmask=0,1\nnum=2\nanchors=1,2\n", "t.cfg:18: layer 1 [yolo]",
         "anchors= has 2 numbers; num=2 needs 4"),
        (conv(4) + conv(4, 3, 2) + "[route]\nlayers=-1,-2\n", "t.cfg:23: layer 2 [route]",
         "layers 1 (4x4) and 0 (8x8) differ in size at input 8x8"),
        (conv(4, 3, 2) + "[upsample]\n[shortcut]\nfrom=-2\n", "t.cfg:16: layer 2 [shortcut]",
         "cannot add layer 0 (4x4) to layer 1 (8x8)"),
        (conv(4) + "[shortcut]\nfrom=-1,-2\n", "t.cfg:15: layer 1 [shortcut]", "one from-layer"),
        ("[maxpool]\n" + conv(4, extra="share_index=0"), "t.cfg:14: layer 1 [convolutional]",
         "share_index points to layer 0, a [maxpool]"),
        ("[dropout]\nprobability=1\n", "t.cfg:7: layer 0 [dropout]", "probability=1.0 must be in [0, 1)"),
    ],
    ids=["route-ahead", "route-before-0", "shortcut-missing", "route-first", "no-filters", "no-layers", "act",
         "groups", "too-small", "yolo-filters", "anchors", "route-sizes", "shortcut-smaller", "shortcut-many",
         "share-maxpool", "dropout"],
)
def test_bad_cfgs_raise_one_line(body, where, words):
    with pytest.raises(CfgError) as e:
        net_from(body)
    msg = str(e.value)
    assert msg.startswith(where + ": "), msg
    assert words in msg, msg
    assert "\n" not in msg


def test_missing_net_size():
    with pytest.raises(CfgError, match=r"^t\.cfg:1: \[net\]: missing option width=$"):
        build(parse_text("[net]\nheight=8\nchannels=3\n" + conv(4), "t.cfg"))


# ---------------------------------------------------------------------------------------------
# the released cfgs

BROKEN = {
    # a WIP cfg: layer 127 shares layer 115's 3x3 conv (128 input channels) but reads layer 98 (256)
    "in-progress/yolov3-spp-matrix.cfg": ("yolov3-spp-matrix.cfg:927: layer 127 [convolutional]", None),
    # ELASTIC blocks max-pool then upsample: at 416 the stride-32 map is 13 -> 7 -> 14 and cannot be
    # concatenated with the 13x13 one (darknet zeroes the route's size); at 512 it is 16 -> 8 -> 16
    "in-progress/csresnet50-elastic-panet-spp.cfg": ("csresnet50-elastic-panet-spp.cfg:1084: layer 168 [route]", 512),
    "in-progress/csresnext50-elastic-panet-spp.cfg": ("csresnext50-elastic-panet-spp.cfg:1111: layer 168 [route]",
                                                      512),
}


def test_every_cfg_builds():
    root = cfg_dir()
    built = 0
    for f in sorted(root.rglob("*.cfg")):
        rel = f.relative_to(root).as_posix()
        with torch.device("meta"):
            if rel in BROKEN:
                where, size = BROKEN[rel]
                with pytest.raises(CfgError) as e:
                    build(f)
                assert where in str(e.value), str(e.value)
                if size is None:
                    continue
                build(f, size)
            else:
                build(f)
        built += 1
    assert built == 63


def _distinct_structures():
    """One cfg per distinct layer structure (the icfg activation variants share theirs) at 64x64."""
    root, seen = cfg_dir(), {}
    for f in sorted(root.rglob("*.cfg")):
        rel = f.relative_to(root).as_posix()
        if BROKEN.get(rel, ("", 0))[1] is None:
            continue
        with torch.device("meta"):
            net = build(f, 64)
        seen.setdefault(tuple((i.kind, i.out_shape, i.summary) for i in net.info), rel)
    return sorted(seen.values())


def _runs_with_its_shapes(structures):
    for rel in structures:
        with torch.device("meta"):
            net = build(cfg_dir() / rel, 64)
        net.to_empty(device="cpu")
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.01)
            for name, b in net.named_buffers():
                b.fill_(1.0 if name.endswith("running_var") else 0.0)
            out = net.eval().run(torch.randn(1, *net.input_shape), range(len(net.layers)))
        assert [tuple(out[i].shape[1:]) for i in range(len(net.layers))] == [i.out_shape for i in net.info], rel
        for i, head in zip(net.yolo_layers, net.heads, strict=True):  # (B, anchors * (5 + classes), H/s, W/s)
            assert out[i].shape[1] == head.num_anchors * (5 + head.num_classes)
            assert 64 % out[i].shape[2] == 0 and 64 % out[i].shape[3] == 0
        if not net.yolo_layers:
            assert net.info[-1].out_shape == (1000, 1, 1), rel


# one of each detector layout: PANet + SPP, FPN + SPP, YOLOv3 head + SPP, ELASTIC backbone
DETECTORS = ["csresnext50-panet-spp.cfg", "in-progress/csresnext50-fpn-spp.cfg",
             "pytorch-branch/csdarknet53-yolo-spp.cfg", "in-progress/csresnet50-elastic-panet-spp.cfg"]


def test_detector_cfgs_run_with_the_shapes_they_were_built_for():
    _runs_with_its_shapes(DETECTORS)


@pytest.mark.slow
def test_every_distinct_cfg_runs_with_the_shapes_it_was_built_for():
    structures = _distinct_structures()
    assert len(structures) == 34
    _runs_with_its_shapes(structures)


def _index_rows():
    text = shared_path("reference", "darknet-cfg", "INDEX.md").read_text()
    table = text.split("## Cross-check")[1]
    rows = re.findall(r"^\| (\S+\.cfg) \| ([\d.]+)M \| ([\d.]+)M \| \**([\d.]+)\** \((\d+)\) \|", table, re.M)
    assert len(rows) == 16, rows
    return text, rows


def _cost(path, size=None):
    with torch.device("meta"):
        return summary(build(path, size))


def test_params_and_bflops_reproduce_index_cross_check():
    text, rows = _index_rows()
    for name, weights, params, bflops, size in rows:
        s = _cost(cfg_dir() / name, int(size))
        assert f"{s['weights'] / 1e6:.2f}" == weights, name
        assert f"{s['params'] / 1e6:.2f}" == params, name
        assert abs(s["bflops"] - float(bflops)) <= 5e-4, (name, s["bflops"], bflops)


def test_detector_bflops_at_512_reproduce_index_and_readme():
    text, _ = _index_rows()
    para = text.split("Detectors at 512x512")[1].split("The \"+ BN")[0]
    pairs = re.findall(r"([a-z0-9-]+)\s+(\d+\.\d{3})\s+\((?:README )?(\d+\.\d{3})\)", para)
    assert len(pairs) == 8, pairs
    for name, conv_only, readme in pairs:
        s = _cost(cfg_dir() / "pytorch-branch" / f"{name}.cfg", 512)
        assert f"{s['bflops']:.3f}" == conv_only, name
        assert f"{s['bflops_darknet']:.3f}" == readme, name  # darknet's total adds the max-pool ops


def test_prn_readme_bflops():
    # PRN README: YOLOv3-tiny 5.571 BFLOPs, YOLOv3-tiny-PRN 3.467 (darknet's printed totals at 416)
    assert f"{_cost(cfg_dir() / 'prn' / 'yolov3-tiny.cfg')['bflops_darknet']:.3f}" == "5.571"
    assert f"{_cost(cfg_dir() / 'prn' / 'yolov3-tiny-prn.cfg')['bflops_darknet']:.3f}" == "3.467"


def test_resnet50_classifier_position_explains_readme_bflops():
    # resnet50.cfg runs its 1x1 classifier at 8x8 before the pool (9.999); the icfg copy pools first
    # and gives the README's 9.74
    assert f"{_cost(cfg_dir() / 'resnet50.cfg')['bflops']:.3f}" == "9.999"
    icfg = cfg_dir() / "in-progress" / "darknet" / "icfg" / "resnet50-leaky.cfg"
    assert f"{_cost(icfg)['bflops']:.2f}" == "9.74"


def test_describe_prints_layers_and_totals():
    text = describe(cfg_dir() / "prn" / "yolov3-tiny-prn.cfg")
    lines = text.splitlines()
    row = next(line for line in lines if line.lstrip().startswith("22 "))
    assert "shortcut" in row and "from 8" in row and "26 x  26 x  128 ->   26 x  26 x  128" in row
    assert "4,935,182" in text and "4.93 M" in text
    assert "3.461" in text and "3.467" in text
    assert "layer 27: 26 x 26 grid, stride 16, 80 classes, anchors 23,27 37,58 81,82" in text
    small = describe(cfg_dir() / "csresnext50.cfg", 64)
    assert "input        64 x 64 x 3" in small and "0.499" in small
