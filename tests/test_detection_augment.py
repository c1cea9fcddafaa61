"""Detection augmentation keeps every box on its object: white rectangles drawn on black images go
through letterbox, affine, flip, mosaic and multi-scale with their boxes, and the boxes must still be
the rectangles' pixel extents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cspnet.data import load_detection_source
from cspnet.data.detect_augment import MIN_BOX, Augment, DetectionTrainSet, MultiScaleCollate
from cspnet.errors import OptionError
from detect_data import rectangles_set

SIZE = 96
TOL = 1.5  # px: bilinear resampling blurs an edge over about one pixel


def _extents(image: torch.Tensor) -> list[tuple[float, float, float, float]]:
    """The white rectangles' boxes (x0, y0, x1, y1) in ``image`` (float CHW): letterbox and affine
    fills are grey (0.45), the backgrounds black."""
    mask = image.mean(0).numpy() > 0.75
    labelled, _ = ndimage.label(mask)
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labelled)]


def _check(image: torch.Tensor, boxes: torch.Tensor) -> None:
    found = _extents(image)
    boxes = boxes.as_subclass(torch.Tensor).tolist()
    for box in boxes:  # every box sits on a rectangle ...
        err = min(max(abs(a - b) for a, b in zip(box, ext, strict=True)) for ext in found)
        assert err <= TOL, (box, found)
    for ext in found:  # ... and every rectangle big enough to be an object has its box
        if ext[2] - ext[0] > MIN_BOX + 2 and ext[3] - ext[1] > MIN_BOX + 2:
            assert any(max(abs(a - b) for a, b in zip(box, ext, strict=True)) <= TOL for box in boxes), (ext, boxes)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return load_detection_source(rectangles_set(tmp_path_factory.mktemp("rects"), n_train=12)).train


@pytest.mark.parametrize("augment", [
    Augment(hflip=0, scale=(1, 1), translate=0, hsv=(0, 0, 0)),  # letterbox alone
    Augment(hflip=1.0, scale=(1, 1), translate=0, hsv=(0, 0, 0)),
    Augment(hflip=0.5, scale=(0.5, 1.5), translate=0.3, hsv=(0, 0, 0)),
    Augment(hflip=0.5, scale=(0.6, 1.4), translate=0.2, hsv=(0, 0, 0), mosaic=1.0),
], ids=["letterbox", "flip", "affine", "mosaic"])
def test_boxes_stay_on_their_rectangles(records, augment):
    data = DetectionTrainSet(records, SIZE, augment)
    torch.manual_seed(0)
    seen = 0
    for i in range(len(data)):
        image, target = data[i]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert len(target["boxes"]) == len(target["labels"])
        _check(image, target["boxes"])
        seen += len(target["boxes"])
    assert seen >= len(data) * (0.5 if augment.translate else 1)  # most objects survive (no vacuous pass)


def test_letterbox_alone_keeps_the_files_boxes_exactly(records):
    data = DetectionTrainSet(records, SIZE, Augment(hflip=0, scale=(1, 1), translate=0, hsv=(0, 0, 0)))
    for i in range(4):
        r = records[i]
        _, target = data[i]
        scale = SIZE / max(r.width, r.height)
        pad = torch.tensor([(SIZE - round(r.width * scale)) // 2, (SIZE - round(r.height * scale)) // 2] * 2)
        assert torch.allclose(target["boxes"].as_subclass(torch.Tensor),
                              torch.as_tensor(r.boxes, dtype=torch.float32) * scale + pad, atol=1e-4)


def test_colour_jitter_changes_pixels_not_boxes(records):
    still = DetectionTrainSet(records, SIZE, Augment(hflip=0, scale=(1, 1), translate=0, hsv=(0, 0, 0)))
    jitter = DetectionTrainSet(records, SIZE, Augment(hflip=0, scale=(1, 1), translate=0, hsv=(0.1, 0.7, 0.4)))
    torch.manual_seed(1)
    (a, ta), (b, tb) = still[0], jitter[0]
    assert torch.equal(ta["boxes"], tb["boxes"]) and not torch.equal(a, b)


def test_boxes_pushed_out_of_the_frame_are_dropped_with_their_labels(records):
    data = DetectionTrainSet(records, SIZE, Augment(hflip=0, scale=(1.5, 2.0), translate=1.0, hsv=(0, 0, 0)))
    torch.manual_seed(0)
    kept = 0
    for i in range(len(data)):
        _, t = data[i]
        boxes = t["boxes"].as_subclass(torch.Tensor)
        assert len(boxes) == len(t["labels"])
        assert (boxes >= 0).all() and (boxes <= SIZE).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX).all()
        kept += len(boxes)
    assert kept < len(data)  # some were pushed out: the case is exercised


def test_multi_scale_batches_are_stride_multiples_with_scaled_boxes(records):
    data = DetectionTrainSet(records, SIZE, Augment(hflip=0, scale=(1, 1), translate=0, hsv=(0, 0, 0)))
    collate = MultiScaleCollate(SIZE, 32)
    assert collate.sizes == [64, 96, 128]  # 0.75x-1.25x of 96, rounded to the stride
    torch.manual_seed(0)
    sizes = set()
    for _ in range(12):
        samples = [data[i] for i in range(4)]
        batch = collate(samples)
        size = batch["inputs"].shape[-1]
        sizes.add(size)
        for k, target in enumerate(batch["targets"]):
            expected = samples[k][1]["boxes"].as_subclass(torch.Tensor) * (size / SIZE)
            assert torch.allclose(target["boxes"], expected)
            _check(batch["inputs"][k], target["boxes"])
    assert sizes == {64, 96, 128}


def test_augment_options_are_checked():
    with pytest.raises(OptionError, match="mosaic"):
        Augment(mosaic=1.5)
    with pytest.raises(OptionError, match="scale"):
        Augment(scale=(0, 1))


def test_the_same_seed_draws_the_same_samples(records):
    data = DetectionTrainSet(records, SIZE, Augment(mosaic=0.5))
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append([data[i] for i in range(6)])
    for (a, ta), (b, tb) in zip(*draws, strict=True):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert np.isfinite([float(x[0].sum()) for x in draws[0]]).all()


def test_a_cached_set_draws_what_an_uncached_one_does_and_keeps_its_cache_intact(records):
    plain = DetectionTrainSet(records, SIZE, Augment(hflip=0.5, mosaic=0.5))
    cached = DetectionTrainSet(records, SIZE, Augment(hflip=0.5, mosaic=0.5), cache=True)
    for epoch in range(2):  # the second epoch reads every image from the cache
        draws = []
        for data in (plain, cached):
            torch.manual_seed(epoch)
            draws.append([data[i] for i in range(len(data))])
        for (a, ta), (b, tb) in zip(*draws, strict=True):
            assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"],
                                                                                              tb["labels"])
    assert sorted(cached.cache) == list(range(len(records)))
    for i, (image, target) in cached.cache.items():  # transforms never wrote into a cached sample
        fresh, want = plain.base[i]
        assert torch.equal(image, fresh) and torch.equal(target["boxes"], want["boxes"])
        assert "skipped" not in target
