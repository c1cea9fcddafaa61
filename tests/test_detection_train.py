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
