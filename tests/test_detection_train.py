"""Detection is a task of the shared engine: a tiny detector trains on real tree-crown tiles with
the same Trainer as classification, its run directory holds what a classification run's does (with
mAP), and its checkpoint evaluates on the command line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torchvision.transforms import v2

import cspnet
from cspnet.cli import main
from cspnet.data import DetectionDataset, Letterbox, collate_detection, load_detection_source
from cspnet.detection.task import DetectionTask
from cspnet.engine import TrainConfig, Trainer
from detect_data import rectangle_image, rectangles_set, yolo_line

SIZE = 128


def test_a_tiny_detector_trains_on_the_engine(shared, tmp_path, capsys):
    trees = shared("data", "detect", "deepforest_trees")
    source = load_detection_source(trees)
    prepare = v2.Compose([Letterbox(SIZE), v2.ToDtype(torch.float32, scale=True)])
    train = DetectionDataset(source.train[:16], prepare, substitute=True)
    val = DetectionDataset(source.val, prepare)
    torch.manual_seed(0)
    model = cspnet.create_model("cspdarknet_tiny_prn", num_classes=1)
    task = DetectionTask(model.heads, SIZE, source.coco_gt("val"), source.category_ids)
    cfg = TrainConfig(epochs=3, batch_size=8, optimizer="adamw", lr=3e-3, warmup_epochs=0, progress=False)
    trainer = Trainer(model, task, train, val, collate_detection, cfg, run_dir=tmp_path / "run",
                      extra={"classes": source.classes, "data": str(trees), "task": "detect"})
    final = trainer.fit()
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 3 and losses[-1] < losses[0]  # it learns: the loss falls
    assert {"val_map", "val_map50", "val_loss"} <= set(rows[0]) and 0 <= final["map50"] <= 1
    assert {"best.safetensors", "last.safetensors", "last.state.pt", "metrics.json", "results.png"} <= {
        p.name for p in (tmp_path / "run").iterdir()}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best_map"] == pytest.approx(
        max(float(r["val_map"]) for r in rows), rel=1e-5)  # the CSV rounds to 6 significant digits
    again = cspnet.create_model(checkpoint=str(tmp_path / "run" / "last.safetensors"))
    assert again.num_classes == 1 and again.model_name == "cspdarknet_tiny_prn"
    assert main(["val", "--task", "detect", "--checkpoint", str(tmp_path / "run"), "--img-size", str(SIZE),
                 "--out", str(tmp_path / "val"), "--threads", "1"]) == 0  # the data comes from the checkpoint
    checked = json.loads((tmp_path / "val" / "metrics.json").read_text())
    best = json.loads((tmp_path / "run" / "best.json").read_text())["metrics"]
    assert checked["map"] == pytest.approx(best["map"], abs=1e-4) and checked["map50"] == pytest.approx(best["map50"],
                                                                                                     abs=1e-4)
    capsys.readouterr()


# --- the command line ---------------------------------------------------------------------------

TINY = ["--model", "cspdarknet_tiny_prn", "--img-size", "64", "--batch-size", "4", "--threads", "1", "--quiet",
        "--workers", "0"]


def _bad_set(root):
    """Rectangles, plus what real sets hold: a background image, boxes outside the image, of zero size
    and of a class the data does not have, and an image that cannot be read."""
    rectangles_set(root, n_train=8, n_val=4)
    labels = root / "labels" / "train"
    rectangle_image(root / "images" / "train" / "background.png", (0, 0, 0, 0))
    (labels / "background.txt").write_text("")
    rectangle_image(root / "images" / "train" / "odd.png", (8, 8, 40, 40))
    (labels / "odd.txt").write_text(yolo_line(0, (8, 8, 40, 40), 64, 64) + "7 0.5 0.5 0.2 0.2\n"
                                    "1 0.5 0.5 0 0.3\n" "0 1.8 1.8 0.1 0.1\n")
    (root / "images" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def _main(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's refusals
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_train_detect_on_bad_data_names_each_problem_and_writes_the_run(tmp_path):
    data = _bad_set(tmp_path / "data")
    rc, out, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "2", "--out", tmp_path / "run",
                          *TINY])
    assert rc == 0, err
    assert "odd.txt" in err and "class 7" in err  # each bad entry named with its file
    assert "broken.png" in err
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert {"box_loss", "obj_loss", "cls_loss"} <= set(rows[0])
    drops = {k: float(v) for k, v in rows[0].items() if k.startswith("data_")}
    assert sum(drops.values()) >= 3, drops  # the class, the zero-size and the outside box, counted
    assert all(float(r["box_loss"]) + float(r["obj_loss"]) + float(r["cls_loss"]) == pytest.approx(
        float(r["train_loss"]), rel=1e-4) for r in rows)  # the components add up to the loss
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"map", "map50", "map75", "maps", "mapm", "mapl", "epoch", "images_per_s"} <= set(metrics)
    assert metrics["epoch"] == 2 and 0 <= metrics["map50"] <= 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"val mAP@0.5:0.95 {metrics['map']:.4f}  mAP@0.5 {metrics['map50']:.4f}")
    for name in ("results.png", "val_images.png", "pr_curve.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len(json.loads((run / "predictions.json").read_text())) > 0
    rc, _, err = _main(["train", "--task", "detect", "--resume", "--out", run, "--quiet"])
    assert rc == 0 and "finishing" not in err  # a finished run resumes to its reports


def test_detect_options_are_refused_in_one_line(tmp_path):
    data = rectangles_set(tmp_path / "data")
    cases = {
        "classifier as detector": (["--model", "cspresnext_tiny"], "cspresnext_tiny is not a detector"),
        "size off the stride": (["--img-size", "70"], "--img-size 70 must be a multiple of 32"),
        "mosaic above 1": (["--mosaic", "2"], "argument --mosaic: '2' must lie in [0, 1]"),
        "unknown box loss": (["--box-loss", "l1"], "argument --box-loss: invalid choice"),
        "grey input": (["--in-chans", "1"], "detectors read RGB images; drop --in-chans"),
    }
    for what, (extra, message) in cases.items():
        rc, _, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--quiet",
                            "--out", tmp_path / what.replace(" ", "_"), *extra])
        assert rc == 2 and message in err and err.count("\n") == 1, (what, err)


def test_backbone_checkpoint_loads_a_classifiers_weights(tmp_path):
    from cspnet.checkpoint import load_state_dict_file, save_checkpoint

    torch.manual_seed(1)
    classifier = cspnet.create_model("cspdarknet_tiny", num_classes=7)
    save_checkpoint(classifier, tmp_path / "cls.safetensors")
    detector = cspnet.create_model("cspdarknet_tiny_prn", num_classes=2)
    report = detector.load_backbone(tmp_path / "cls.safetensors")
    assert report["unused"] == ["head.fc.bias", "head.fc.weight"] and not report["missing"]
    own = detector.backbone.state_dict()
    for key, value in load_state_dict_file(tmp_path / "cls.safetensors").items():
        if key in own:
            assert torch.equal(own[key], value), key
    other = cspnet.create_model("resnet_tiny")
    save_checkpoint(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"only 12 of the backbone's 216 tensors \(cspdarknet_tiny\) are in it"):
        detector.load_backbone(tmp_path / "other.safetensors")
    data = rectangles_set(tmp_path / "data")
    rc, _, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--out", tmp_path / "run",
                        "--backbone-checkpoint", tmp_path / "cls.safetensors", *TINY])
    assert rc == 0, err
    n = len(report["loaded"])
    assert f"backbone: loaded {n} of {n} tensors from {tmp_path / 'cls.safetensors'}; unused 2" in err


def test_builtin_pretraining_trains_the_backbone_on_the_digits_first(tmp_path):
    from cspnet.commands.recipes.detect import IOU_THRESH, PRETRAIN_EPOCHS
    from cspnet.engine import STATE_FILE, load_state

    data = rectangles_set(tmp_path / "data", n_train=8)
    rc, out, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--out", tmp_path / "run",
                          "--backbone-checkpoint", "builtin", "--set", "fusion=none", *TINY])
    assert rc == 0, err
    pretrained = tmp_path / "run" / "backbone" / "best.safetensors"
    assert "backbone: pretraining cspdarknet_tiny on the built-in digits" in err
    meta = cspnet.checkpoint.read_metadata(pretrained)
    last = cspnet.checkpoint.read_metadata(pretrained.with_name("last.safetensors"))
    # a classification run of PRETRAIN_EPOCHS; the detector starts from its best epoch, not always the last
    assert meta["model"] == last["model"] == "cspdarknet_tiny" and last["epoch"] == PRETRAIN_EPOCHS
    assert 1 <= meta["epoch"] <= PRETRAIN_EPOCHS
    n = len(cspnet.create_model("cspdarknet_tiny_prn", fusion="none").backbone.state_dict())
    # with the detector's backbone overrides (fusion=none), so every tensor fits: none missing or mismatched
    assert f"backbone: loaded {n} of {n} tensors from {pretrained}; unused 2" in err
    saved = load_state(tmp_path / "run" / STATE_FILE)["args"]
    assert saved["backbone_checkpoint"] == str(pretrained) and saved["iou_thresh"] == IOU_THRESH
    assert out.count("top-1") >= PRETRAIN_EPOCHS  # the pretraining reports as any classification run does
    rc, _, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--out", tmp_path / "own",
                        "--iou-thresh", "1", *TINY])
    saved = load_state(tmp_path / "own" / STATE_FILE)["args"]
    assert rc == 0 and "pretraining" not in err and saved["backbone_checkpoint"] == "none"  # not builtin data
    assert saved["iou_thresh"] == 1.0
    rc, _, err = _main(["train", "--task", "detect", "--data", data, "--iou-thresh", "0", *TINY])
    assert rc == 2 and "--iou-thresh" in err and "must be > 0" in err and err.count("\n") == 1


def test_training_replaces_anchors_that_fit_badly_and_resume_keeps_them(tmp_path):
    from cspnet.engine import STATE_FILE, load_state

    data = rectangles_set(tmp_path / "data", n_train=8)
    given = [[200, 200], [210, 210], [220, 220], [230, 230], [240, 240], [250, 250]]
    rc, _, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--out", tmp_path / "run",
                        *TINY, "--set", f"anchors={json.dumps(given)}"])
    assert rc == 0 and "they fit badly: see `cspnet anchors`" in err  # anchors given: kept, with a warning
    kept = cspnet.create_model(checkpoint=str(tmp_path / "run" / "last.safetensors"))
    assert {a for h in kept.heads for a in h.anchors} == {tuple(map(float, a)) for a in given[1:]}  # masks skip 0
    # at 32 px the rectangles are a few pixels wide: the default anchors reach few of them
    small = [a if a != "64" else "32" for a in TINY]
    rc, _, err = _main(["train", "--task", "detect", "--data", data, "--epochs", "1", "--out", tmp_path / "auto",
                        *small])
    assert rc == 0 and "they fit badly, using k-means anchors" in err, err
    printed = json.loads(err.split("using k-means anchors ")[1].split(" (")[0])
    auto = cspnet.create_model(checkpoint=str(tmp_path / "auto" / "last.safetensors"))
    assert {a for h in auto.heads for a in h.anchors} == {tuple(map(float, a)) for a in printed[1:]}
    saved = dict(load_state(tmp_path / "auto" / STATE_FILE)["args"]["model_args"])
    assert [list(a) for a in saved["anchors"]] == printed  # what --resume rebuilds the model with


# --- resume -------------------------------------------------------------------------------------


def test_resumed_detection_run_equals_an_uninterrupted_one(tmp_path):
    from cspnet.data.detect_augment import Augment, DetectionTrainSet, MultiScaleCollate, eval_transforms
    from cspnet.engine import STATE_FILE, load_state

    source = load_detection_source(rectangles_set(tmp_path / "data", n_train=8, n_val=4))
    augment = Augment(mosaic=0.5)  # every random draw of the augmentation must replay on resume

    def trainer(out):
        torch.manual_seed(0)
        model = cspnet.create_model("cspdarknet_tiny_prn", num_classes=2, img_size=64)
        task = DetectionTask(model.heads, 64, source.coco_gt("val"), source.category_ids)
        cfg = TrainConfig(epochs=2, batch_size=4, optimizer="adamw", lr=1e-3, warmup_epochs=0.5, progress=False,
                          ema=True, ema_decay=0.9)
        return Trainer(model, task, DetectionTrainSet(source.train, 64, augment),
                       DetectionDataset(source.val, eval_transforms(64)), MultiScaleCollate(64, 32), cfg,
                       run_dir=out, val_collate_fn=collate_detection, log=lambda _: None)

    straight = trainer(tmp_path / "a")
    straight.fit()

    class Killed(Exception):
        pass

    def kill(t, row):
        raise Killed

    with pytest.raises(Killed):
        trainer(tmp_path / "b").fit(callbacks=[kill])
    resumed = trainer(tmp_path / "b")
    resumed.load_state_dict(load_state(tmp_path / "b" / STATE_FILE))
    resumed.fit()
    for a, b in [(straight.model, resumed.model), (straight.eval_model, resumed.eval_model)]:
        sa, sb = a.state_dict(), b.state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert [r["box_loss"] for r in straight.history] == [r["box_loss"] for r in resumed.history]
