"""cspnet.detection.yolo_decode: darknet's [yolo] box decoding and the NMS after it, alone and on
the outputs of a detector cfg."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import shared_path
from cspnet.darknet import build, randomize
from cspnet.detection import YoloHead, activate, decode, decode_head, detect, nms


def logit(p):
    return math.log(p / (1 - p))


def test_decode_head_follows_darknet_formulas():
    head = YoloHead(anchors=((10.0, 20.0), (30.0, 40.0)), num_classes=2)
    raw = torch.zeros(1, 2 * 7, 2, 3)  # 2 anchors x (5 + 2), grid 2 rows x 3 cols, input 64 x 96 (h x w)
    # anchor 1, row 1, col 2: tx = logit(.25), ty = logit(.75), tw = log 2, th = 0, obj .9, classes .2 / .6
    raw[0, 7:14, 1, 2] = torch.tensor([logit(0.25), logit(0.75), math.log(2), 0.0, logit(0.9), logit(0.2),
                                       logit(0.6)])
    out = decode_head(raw, head, (64, 96))
    assert out.shape == (1, 2 * 2 * 3, 7)
    row = out[0, 1 * 6 + 1 * 3 + 2]  # anchor-major, then row, then col
    cx, cy = (2 + 0.25) / 3 * 96, (1 + 0.75) / 2 * 64
    w, h = 30 * 2, 40
    want = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, 0.9, 0.2, 0.6])
    assert torch.allclose(row, want, atol=1e-5)
    # an all-zero cell: centre of its cell, the anchor's size, everything at 0.5
    first = out[0, 0]
    assert torch.allclose(first, torch.tensor([16 - 5, 16 - 10, 16 + 5, 16 + 10, 0.5, 0.5, 0.5]))


def test_scale_x_y_and_new_coords():
    raw = torch.tensor([20.0, -20.0, 0, 0, 0, 0]).view(1, 6, 1, 1)  # sigmoid: ~1 and ~0
    out = decode_head(raw, YoloHead(((8.0, 8.0),), 1, scale_x_y=1.2), 32)
    # x' = s * sigmoid(t) - (s - 1) / 2 reaches (s + 1) / 2 = 1.1 and -(s - 1) / 2 = -0.1 of a cell
    assert torch.allclose(out[0, 0, :4], torch.tensor([1.1 * 32 - 4, -0.1 * 32 - 4, 1.1 * 32 + 4, -0.1 * 32 + 4]),
                          atol=1e-4)
    raw = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.7, 0.9]).view(1, 6, 1, 1)  # already sigmoid'ed by the conv
    out = decode_head(raw, YoloHead(((8.0, 16.0),), 1, new_coords=True), 32)
    w, h = 4 * 0.5 ** 2 * 8, 4 * 0.25 ** 2 * 16  # 4 * t^2 * anchor
    want = torch.tensor([16 - w / 2, 16 - h / 2, 16 + w / 2, 16 + h / 2, 0.7, 0.9])
    assert torch.allclose(out[0, 0], want)


def test_yolo_layer_outputs_what_darknet_does():
    head = YoloHead(((8.0, 8.0),), 1, scale_x_y=1.1)
    raw = torch.randn(2, 6, 3, 3)
    out = activate(raw, head)
    torch.testing.assert_close(out[:, :2], raw[:, :2].sigmoid() * 1.1 - 0.05)
    torch.testing.assert_close(out[:, 2:4], raw[:, 2:4])
    torch.testing.assert_close(out[:, 4:], raw[:, 4:].sigmoid())


def test_channel_count_is_checked():
    with pytest.raises(ValueError, match="has 18 channels, not 17"):
        decode_head(torch.zeros(1, 17, 2, 2), YoloHead(((1.0, 1.0),) * 3, 1), 64)


def test_nms_thresholds_and_per_class_suppression():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]],
                         dtype=torch.float32)
    obj = torch.tensor([0.9, 0.8, 0.9, 0.2, 0.9])
    cls = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.8], [1.0, 0.0], [0.5, 0.5]])
    pred = torch.cat([boxes, obj[:, None], cls], 1)[None]
    (res,) = nms(pred, conf_thresh=0.25, iou_thresh=0.45)
    # box 1 overlaps box 0 (same class, lower score): suppressed; box 2 is another class: kept;
    # box 3's objectness is below the threshold; box 4 is kept once per class above 0.25 (0.45 each)
    got = sorted((tuple(b.tolist()), int(c), round(float(s), 3)) for b, c, s in
                 zip(res["boxes"], res["labels"], res["scores"], strict=True))
    assert got == [((0.0, 0.0, 10.0, 10.0), 0, 0.81), ((0.0, 0.0, 10.0, 10.0), 1, 0.72),
                   ((20.0, 20.0, 30.0, 30.0), 0, 0.45), ((20.0, 20.0, 30.0, 30.0), 1, 0.45)]
    assert res["scores"].tolist() == sorted(res["scores"].tolist(), reverse=True)
    assert len(nms(pred, conf_thresh=0.25, iou_thresh=0.45, max_det=2)[0]["boxes"]) == 2


def test_detector_cfg_outputs_decode_to_boxes_in_pixels():
    cfg = shared_path("reference", "darknet-cfg", "prn", "yolov3-tiny-prn.cfg")
    net = randomize(build(cfg, (64, 96)), seed=0).eval()
    with torch.no_grad():
        raws = net(torch.randn(2, 3, 64, 96))
    assert [tuple(r.shape) for r in raws] == [(2, 255, 2, 3), (2, 255, 4, 6)]  # strides 32 and 16
    heads = net.heads
    assert heads[0].anchors == ((81, 82), (135, 169), (344, 319)) and heads[1].anchors == ((23, 27), (37, 58),
                                                                                             (81, 82))
    pred = decode(raws, heads, (64, 96))
    assert pred.shape == (2, 3 * 6 + 3 * 24, 85)
    # the first row of the second head: anchor (23, 27) at the top-left cell of the 4x6 grid
    t = raws[1][0, :4, 0, 0]
    cx, cy = t[0].sigmoid() / 6 * 96, t[1].sigmoid() / 4 * 64
    w, h = 23 * t[2].exp(), 27 * t[3].exp()
    assert torch.allclose(pred[0, 18, :4], torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
                          atol=1e-4)
    k = net.yolo_layers[1]
    with torch.no_grad():
        out = net.run(torch.randn(1, 3, 64, 96), [k - 1, k])
    torch.testing.assert_close(out[k], activate(out[k - 1], heads[1]))  # the [yolo] layer's own output
    dets = detect(raws, heads, (64, 96), conf_thresh=0.0, iou_thresh=0.45)
    assert len(dets) == 2 and all(len(d["boxes"]) > 0 for d in dets)
    assert all(d["labels"].max() < 80 and d["scores"].max() <= 1 for d in dets)
