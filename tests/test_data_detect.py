"""Detection data: the COCO and YOLO forms of one real set read alike, bad entries skipped with
warnings naming file and entry, structural errors in one line, unreadable images named at load
time, the letterbox and its inverse, and the COCO ground truth synthesised from YOLO labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2

from conftest import shared_path
from cspnet.data.detect import (
    DetectionDataset,
    Letterbox,
    collate_detection,
    letterbox,
    letterbox_boxes,
    load_detection_source,
    unletterbox_boxes,
)

TREES = ("data", "detect", "deepforest_trees")


@pytest.fixture(scope="module")
def trees():
    root = shared_path(*TREES)
    return load_detection_source(root), load_detection_source(root / "data.yaml")


def _sorted_boxes(boxes) -> np.ndarray:
    """Rows in a canonical order (rounded keys, so float noise cannot reorder them)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keys = np.round(boxes, 2)
    return boxes[np.lexsort(keys.T[::-1])]


def _image(path: Path, size=(40, 30), mode="RGB", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    (img.convert(mode) if mode != "RGB" else img).save(path)
    return path


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- the real tree set, both layouts ------------------------------------------------------------


def test_both_layouts_of_the_tree_set_read_alike(trees):
    coco, yolo = trees
    assert (coco.layout, yolo.layout) == ("coco", "yolo")
    for src in trees:
        assert src.classes == ["Tree"] and src.category_ids == [1]
        assert (len(src.train), len(src.val)) == (45, 10)
        assert [sum(r.num_targets for r in s) for s in (src.train, src.val)] == [889, 241]
        assert src.counts == {} and src.warnings == [] and src.summary() == ""
    for split in ("train", "val"):
        by_name = {r.file_name: r for r in yolo.split(split)}
        assert sorted(by_name) == sorted(r.file_name for r in coco.split(split))
        for r in coco.split(split):
            y = by_name[r.file_name]
            assert (y.width, y.height, y.path) == (r.width, r.height, r.path) == (400, 400, y.path)
            assert len(y.boxes) == len(r.boxes)
            np.testing.assert_allclose(_sorted_boxes(y.boxes), _sorted_boxes(r.boxes), atol=1e-3, rtol=0)
            assert set(y.labels.tolist()) <= {0} and set(r.labels.tolist()) <= {0}


def test_tree_samples_are_tv_tensors_that_v2_transforms_move_together(trees):
    coco, _ = trees
    record = coco.val[0]
    image, target = DetectionDataset(coco.val)[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 400, 400)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(record.path).convert("RGB")))
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert boxes.canvas_size == (400, 400) and boxes.dtype == torch.float32
    assert target["image_id"] == record.image_id and target["orig_size"] == (400, 400)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [0] * len(record.boxes)
    x, y, w, h = coco.coco_gt("val")["annotations"][0]["bbox"]  # the json's first box, of the first image
    assert boxes[0].tolist() == [x, y, x + w, y + h]
    flipped_image, flipped = DetectionDataset(coco.val, v2.RandomHorizontalFlip(p=1.0))[0]
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.allclose(flipped["boxes"][:, [2, 0]], 400 - boxes[:, [0, 2]])
    assert isinstance(flipped["boxes"], tv_tensors.BoundingBoxes)


def test_coco_gt_from_yolo_labels_matches_the_coco_json(trees):
    root = shared_path(*TREES)
    _, yolo = trees
    for split in ("train", "val"):
        truth = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        made = yolo.coco_gt(split)
        assert [(c["id"], c["name"]) for c in made["categories"]] == [(c["id"], c["name"]) for c in truth["categories"]]
        assert sorted((i["file_name"], i["width"], i["height"]) for i in made["images"]) == sorted(
            (i["file_name"], i["width"], i["height"]) for i in truth["images"])
        assert len({a["id"] for a in made["annotations"]}) == len(made["annotations"]) == len(truth["annotations"])

        def per_file(gt):
            names = {i["id"]: i["file_name"] for i in gt["images"]}
            out = {}
            for a in gt["annotations"]:
                out.setdefault(names[a["image_id"]], []).append([*a["bbox"], a["area"], a["category_id"], a["iscrowd"]])
            return {k: _sorted_boxes(np.array(v)[:, :4]) for k, v in out.items()}, out

        made_boxes, made_rows = per_file(made)
        true_boxes, true_rows = per_file(truth)
        assert made_boxes.keys() == true_boxes.keys()
        for name in true_boxes:
            np.testing.assert_allclose(made_boxes[name], true_boxes[name], atol=1e-3, rtol=0)
            made_areas = sorted(r[4] for r in made_rows[name])
            np.testing.assert_allclose(made_areas, sorted(r[4] for r in true_rows[name]), rtol=1e-4)
            assert {(r[5], r[6]) for r in made_rows[name]} == {(r[5], r[6]) for r in true_rows[name]} == {(1, 0)}


def test_coco_gt_from_the_coco_json_is_the_json(trees):
    root = shared_path(*TREES)
    coco, _ = trees
    truth = json.loads((root / "annotations" / "instances_val.json").read_text())
    made = coco.coco_gt("val")
    keys = ("id", "width", "height", "file_name")
    assert made["images"] == [{k: i[k] for k in keys} for i in truth["images"]]
    keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
    assert made["annotations"] == [{k: a[k] for k in keys} for a in truth["annotations"]]
    assert made["categories"] == truth["categories"]


# --- a hand-made COCO set with every kind of bad entry ----------------------------------------


def _bad_coco(root: Path, files_under: Path | None = None) -> Path:
    """val: image 1 (40x30) with good, crowd, zero-size, outside, partly outside, unknown-category
    boxes; image 2 without annotations; image 3 listed but missing; an annotation of image 99."""
    images = files_under or root / "images" / "val"
    _image(images / "a.png")
    _image(images / "b.png", mode="L")
    _image((files_under or root / "images" / "train") / "t.png", mode="P")
    cats = [{"id": 7, "name": "dog", "supercategory": "animal"}, {"id": 3, "name": "cat", "supercategory": "animal"}]
    anns = [
        (1, 1, 3, [1, 2, 10, 8], 0),
        (2, 1, 7, [5, 5, 6, 4], 1),
        (3, 1, 3, [10, 10, 0, 5], 0),
        (4, 1, 7, [50, 50, 5, 5], 0),
        (5, 1, 7, [30, 20, 20, 20], 0),
        (6, 1, 5, [1, 1, 4, 4], 0),
        (7, 3, 3, [1, 1, 4, 4], 0),
        (8, 99, 3, [1, 1, 4, 4], 0),
    ]
    _write_json(root / "annotations" / "instances_val.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                   {"id": 3, "file_name": "gone.png", "width": 40, "height": 30}],
        "annotations": [{"id": i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": z}
                        for i, im, c, b, z in anns],
        "categories": cats})
    _write_json(root / "annotations" / "instances_train.json", {
        "images": [{"id": 5, "file_name": "t.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0}],
        "categories": cats})
    return root


def test_a_bad_coco_set_is_read_as_coco_would_with_warnings(tmp_path):
    src = load_detection_source(_bad_coco(tmp_path))
    assert src.layout == "coco"
    assert src.classes == ["cat", "dog"] and src.category_ids == [3, 7]  # sorted by the original id
    assert [r.image_id for r in src.val] == [1, 2] and [r.image_id for r in src.train] == [5]
    a, b = src.val
    assert a.ann_ids.tolist() == [1, 2, 5] and a.iscrowd.tolist() == [False, True, False]
    assert a.labels.tolist() == [0, 1, 1]
    assert a.boxes.tolist() == [[1, 2, 11, 10], [5, 5, 11, 9], [30, 20, 40, 30]]  # the last one clipped
    assert len(b.boxes) == 0  # no annotations: kept as a negative
    assert src.warnings == [
        "instances_val.json: image 3 (gone.png): file not found under images/val; skipped",
        "instances_val.json: annotation 6 (image 1): category 5 not in categories; skipped",
        "instances_val.json: annotation 8: image 99 not in images; skipped",
        "instances_val.json: annotation 3 (image 1): zero-size box [10, 10, 0, 5]; skipped",
        "instances_val.json: annotation 4 (image 1): box [50, 50, 5, 5] lies outside the 40x30 image; skipped",
        "instances_val.json: annotation 5 (image 1): box [30, 20, 20, 20] extends outside the 40x30 image; "
        "clipped to [30, 20, 10, 10] px",
    ]
    assert src.counts == {"missing image": 1, "unknown category": 1, "unknown image": 1, "zero-size box": 1,
                          "box outside image": 1, "box clipped": 1}
    assert src.num_warnings == 6 and src.summary(1).startswith("6 warnings (1 missing image, ")
    assert src.summary(1).endswith("; first: " + src.warnings[0])

    data = DetectionDataset(src.val)
    image, target = data[0]
    assert target["labels"].tolist() == [0, 1]  # the crowd region is no target
    assert target["boxes"].tolist() == [[1, 2, 11, 10], [30, 20, 40, 30]]
    grey, empty = data[1]
    assert grey.shape == (3, 30, 40) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["image_id"] == 2
    assert DetectionDataset(src.train)[0][0].shape == (3, 30, 40)  # palette image converted to RGB

    gt = src.coco_gt("val")
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert [(x["id"], x["category_id"], x["iscrowd"], x["bbox"]) for x in gt["annotations"]] == [
        (1, 3, 0, [1, 2, 10, 8]), (2, 7, 1, [5, 5, 6, 4]), (5, 7, 0, [30, 20, 20, 20])]  # as written
    assert gt["categories"] == [{"id": 3, "name": "cat", "supercategory": "animal"},
                                {"id": 7, "name": "dog", "supercategory": "animal"}]


def test_coco_file_names_may_be_relative_to_a_given_image_root(tmp_path):
    pics = tmp_path / "elsewhere"
    src = load_detection_source(_bad_coco(tmp_path / "set", files_under=pics), image_root=pics)
    assert [r.path for r in src.val] == [pics / "a.png", pics / "b.png"]
    assert src.counts["missing image"] == 1 and f"not found under {pics}" in src.warnings[0]


def test_coco_structural_errors_are_one_line_naming_the_file(tmp_path):
    root = _bad_coco(tmp_path)
    (root / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"instances_val\.json: not a readable COCO json") as e:
        load_detection_source(root)
    assert "\n" not in str(e.value)
    _write_json(root / "annotations" / "instances_val.json", {"images": []})
    with pytest.raises(ValueError, match=r"instances_val\.json: no 'categories' list"):
        load_detection_source(root)
    (root / "annotations" / "instances_val.json").unlink()
    with pytest.raises(ValueError, match=r"annotations: no instances_val\.json"):
        load_detection_source(root)
    assert [r.image_id for r in load_detection_source(root, splits=("train",)).train] == [5]
    for spec in (tmp_path / "nope", tmp_path / "nope.yaml", tmp_path / "images"):
        with pytest.raises(ValueError, match=rf"^{spec}: .*detection data is builtin .*, a YOLO data YAML") as e:
            load_detection_source(spec)
        assert "\n" not in str(e.value)


def test_coco_images_nowhere_to_be_found_is_an_error_not_an_empty_set(tmp_path):
    root = _bad_coco(tmp_path)
    for p in (root / "images" / "val").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"instances_val\.json: none of its 3 image files \(e\.g\. a\.png\)"):
        load_detection_source(root)


# --- YOLO ---------------------------------------------------------------------------------------


def _yolo(root: Path, yaml_text: str | None = None) -> Path:
    """train: one labelled image; val: out-of-range class, an empty label file, no label file,
    a polygon, a zero-size box and a box partly outside."""
    _image(root / "images" / "train" / "t.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "t.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    for name in ("a", "b", "c"):
        _image(root / "images" / "val" / f"{name}.png", size=(40, 20))
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "a.txt").write_text(
        "0 0.5 0.5 0.25 0.5\n2 0.5 0.5 0.1 0.1\n\n1 0.1 0.1 0.3 0.1 0.3 0.3\n0 0.5 0.5 0 0.2\n1 0.9 0.5 0.5 0.5\n"
        "0 nan 0.5 0.1 0.1\n")
    (root / "labels" / "val" / "b.txt").write_text("")
    text = yaml_text if yaml_text is not None else "path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n"
    (root / "data.yaml").write_text(text)
    return root / "data.yaml"


def test_a_yolo_set_with_bad_lines_and_background_images(tmp_path):
    src = load_detection_source(_yolo(tmp_path))
    assert src.layout == "yolo" and src.classes == ["cat", "dog"] and src.category_ids == [1, 2]
    assert [r.file_name for r in src.val] == ["a.png", "b.png", "c.png"] and [r.image_id for r in src.val] == [1, 2, 3]
    a, b, c = src.val
    np.testing.assert_allclose(a.boxes, [[15, 5, 25, 15], [4, 2, 12, 6], [26, 5, 40, 15]])  # last one clipped
    assert a.labels.tolist() == [0, 1, 1] and a.ann_ids.tolist() == [1, 2, 3]
    assert len(b.boxes) == len(c.boxes) == 0  # empty / missing label file: background, kept
    assert src.warnings == [
        "labels/val/a.txt: line 2: class 2 but data.yaml names 2 classes (0-1); skipped",
        "labels/val/a.txt: line 7: '0 nan 0.5 0.1 0.1' is not 'class cx cy w h'; skipped",
        "labels/val/a.txt: line 5: zero-size box [0.5 0.5 0 0.2] (cx cy w h); skipped",
        "labels/val/a.txt: line 6: box [0.9 0.5 0.5 0.5] (cx cy w h) extends outside the 40x20 image; "
        "clipped to [26, 5, 14, 10] px",
    ]
    assert src.counts == {"class out of range": 1, "bad label line": 1, "zero-size box": 1, "box clipped": 1}
    gt = src.coco_gt("val")
    assert [(x["image_id"], x["category_id"]) for x in gt["annotations"]] == [(1, 1), (1, 2), (1, 2)]
    np.testing.assert_allclose(gt["annotations"][2]["bbox"], [26, 5, 20, 10])  # as written, unclipped
    assert gt["annotations"][2]["area"] == pytest.approx(200)
    batch = collate_detection([DetectionDataset(src.val)[i] for i in range(3)])
    assert batch["inputs"].shape == (3, 3, 20, 40) and batch["skipped"] == []
    assert [len(t["boxes"]) for t in batch["targets"]] == [3, 0, 0]


def test_yolo_names_as_a_mapping_and_an_absolute_path(tmp_path):
    root = tmp_path / "set"
    _yolo(root)
    yaml_file = tmp_path / "elsewhere.yml"
    yaml_file.write_text(f"path: {root}\ntrain: images/train\nval: [images/val]\nnc: 2\nnames:\n  0: cat\n  1: dog\n")
    src = load_detection_source(yaml_file)
    assert src.classes == ["cat", "dog"] and len(src.val) == 3 and src.root == root
    assert src.train[0].labels.tolist() == [1]
    np.testing.assert_allclose(src.train[0].boxes, [[10, 7.5, 30, 22.5]])
    assert load_detection_source(root).layout == "yolo"  # a folder holding data.yaml


@pytest.mark.parametrize("text, message", [
    ("path: nope\ntrain: images/train\nval: images/val\nnames: [a, b]\n", r"'path' 'nope' \(.*nope\) does not exist"),
    ("path: .\ntrain: images/train\nval: images/nope\nnames: [a, b]\n", r"'val' 'images/nope' \(.*\) does not exist"),
    ("path: .\ntrain: images/train\nnames: [cat, dog]\n", r"no 'val' \(the val images"),
    ("path: .\ntrain: images/train\nval: images/val\n", r"no 'names'"),
    ("path: .\ntrain: images/train\nval: images/val\nnc: 3\nnames: [cat, dog]\n", r"'nc' is 3 but 'names' lists 2"),
    ("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 2: dog}\n", r"'names' ids must be 0-1"),
    ("path: [unclosed\n", r"not a readable data YAML"),
    ("path: .\ntrain: images/train\nval: labels/val\nnames: [cat]\n", r"'val' 'labels/val' holds no image files"),
])
def test_yolo_structural_errors_are_one_line_naming_the_yaml_and_key(tmp_path, text, message):
    yaml_file = _yolo(tmp_path, text)
    with pytest.raises(ValueError, match=rf"^{yaml_file}: {message}") as e:
        load_detection_source(yaml_file)
    assert "\n" not in str(e.value)


# --- unreadable images at load time -----------------------------------------------------------


def test_an_unreadable_image_is_skipped_and_named_at_load_time(tmp_path):
    root = _bad_coco(tmp_path)
    broken = root / "images" / "val" / "a.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header reads, the pixels do not
    src = load_detection_source(root)
    assert [r.image_id for r in src.val] == [1, 2]  # the file exists; decoding it is the loader's job
    data = DetectionDataset(src.val)
    image, target = data[0]
    assert image is None and target["image_id"] == 1
    assert len(target["skipped"]) == 1 and target["skipped"][0].startswith(f"{broken}: not a readable image")
    batch = collate_detection([data[i] for i in range(len(data))])
    assert batch["skipped"] == target["skipped"]
    assert batch["inputs"].shape == (1, 3, 30, 40) and [t["image_id"] for t in batch["targets"]] == [2]
    image, target = DetectionDataset(src.val, substitute=True)[0]  # training: the next readable one instead
    assert target["image_id"] == 2 and target["skipped"] == batch["skipped"]
    batch = collate_detection([(image, target)])
    assert batch["skipped"] == target["skipped"] and "skipped" not in batch["targets"][0]


def test_a_yolo_image_whose_header_is_unreadable_is_skipped_when_listing(tmp_path):
    yaml_file = _yolo(tmp_path)
    (tmp_path / "images" / "val" / "c.png").write_bytes(b"not a png")
    src = load_detection_source(yaml_file)
    assert [r.file_name for r in src.val] == ["a.png", "b.png"]
    assert src.counts["unreadable image"] == 1
    assert [w for w in src.warnings if w.startswith("images/val/c.png: not a readable image")]


def test_a_batch_of_unequal_sizes_is_a_one_line_error_naming_the_images(tmp_path):
    src = load_detection_source(_bad_coco(tmp_path))
    samples = [DetectionDataset(src.val)[1], DetectionDataset(src.train)[0]]
    samples[1] = (samples[1][0][:, :20], samples[1][1])
    with pytest.raises(ValueError, match=r"images of one size \(image 2: 3x30x40, image 5: 3x20x40\); letterbox"):
        collate_detection(samples)


# --- letterbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w, size", [(30, 60, 120), (37, 53, 64), (90, 50, 64), (64, 64, 64)])
def test_letterbox_maps_a_drawn_rectangle_there_and_back(h, w, size):
    img = Image.new("RGB", (w, h), (0, 0, 0))
    box = [w // 5, h // 4, w // 5 + w // 2, h // 4 + h // 2]  # pixel edges, XYXY
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    image = tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    out, params = letterbox(image, size)
    scale, pad_x, pad_y = params
    assert out.shape == (3, size, size) and out.dtype == torch.uint8 and isinstance(out, tv_tensors.Image)
    assert scale == size / max(h, w) and (pad_x == 0 or pad_y == 0)
    new_w, new_h = round(w * scale), round(h * scale)
    assert (pad_x, pad_y) == ((size - new_w) // 2, (size - new_h) // 2)
    pad = torch.ones(size, size, dtype=torch.bool)
    pad[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = False
    assert (out[:, pad] == 114).all()

    mapped = letterbox_boxes(torch.tensor([box], dtype=torch.float64), params)[0]
    bright = (out[0] > 127).nonzero()
    found = [bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]
    assert (torch.tensor(found, dtype=torch.float64) - mapped).abs().max() <= 1.0  # within a pixel of the drawing
    back = unletterbox_boxes(mapped, params)
    assert (back - torch.tensor(box, dtype=torch.float64)).abs().max() < 1e-4
    clipped = unletterbox_boxes(torch.tensor([[-5.0, -5.0, size + 5.0, size + 5.0]]), params, orig_size=(h, w))
    assert clipped.tolist() == [[0, 0, w, h]]


def test_letterbox_as_a_transform_moves_boxes_and_batches(tmp_path):
    src = load_detection_source(_bad_coco(tmp_path))
    data = DetectionDataset(src.val, transforms=Letterbox(80))
    batch = collate_detection([data[0], data[1]])
    assert batch["inputs"].shape == (2, 3, 80, 80)
    first = batch["targets"][0]
    assert first["letterbox"] == (2.0, 0, 10) and first["boxes"].canvas_size == (80, 80)
    assert first["boxes"].tolist() == [[2, 14, 22, 30], [60, 50, 80, 70]]
    back = unletterbox_boxes(first["boxes"], first["letterbox"], first["orig_size"])
    assert back.tolist() == [[1, 2, 11, 10], [30, 20, 40, 30]]
    floats, _ = letterbox(torch.zeros(3, 10, 20), 40)
    assert floats[0, 0, 0].item() == pytest.approx(114 / 255)
