"""Short runs on small sets: ``--optimizer auto`` and its rule, and broken or odd files that leave a
run as the clean folder would train it (benchmarks/small_data.md has the figures)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cspnet.data import build_classify_data, load_source
from cspnet.data.scan import holds_grey
from cspnet.engine import TrainConfig
from cspnet.engine.optim import AUTO_SGD_FROM_STEPS, BASE_LR, DEFAULT_WEIGHT_DECAY, auto_optimizer
from test_data_sources import make_image_folder
from test_train_cli import TINY, _main


def test_auto_is_adamw_for_short_runs_and_sgd_for_long_ones():
    assert auto_optimizer(1) == auto_optimizer(AUTO_SGD_FROM_STEPS) == "adamw"
    assert auto_optimizer(AUTO_SGD_FROM_STEPS + 1) == "sgd"
    short = TrainConfig(batch_size=128).for_steps(8 * 16)
    assert (short.optimizer, short.weight_decay) == ("adamw", DEFAULT_WEIGHT_DECAY["adamw"])
    assert short.lr == pytest.approx(BASE_LR["adamw"] * math.sqrt(0.5))  # AdamW: by the batch's square root
    long = TrainConfig(batch_size=128).for_steps(90 * 10_000)
    assert (long.optimizer, long.lr, long.weight_decay) == ("sgd", BASE_LR["sgd"] / 2, DEFAULT_WEIGHT_DECAY["sgd"])
    given = TrainConfig(lr=0.123, weight_decay=0.0).for_steps(100)  # what the user gave stays
    assert (given.optimizer, given.lr, given.weight_decay) == ("adamw", 0.123, 0.0)
    unresolved = TrainConfig()
    assert (unresolved.optimizer, unresolved.lr) == ("auto", None)  # until the run's length is known
    named = TrainConfig(optimizer="sgd")  # a named optimizer settles its defaults at once
    assert named.lr == BASE_LR["sgd"] * 32 / 256  # the default batch of 32


def test_a_run_says_what_auto_chose_and_saves_it(tmp_path):
    rc, out, err = _main(["train", *TINY, "--epochs", "1", "--batch-size", "64", "--out", tmp_path / "run"])
    assert rc == 0, err
    steps = 1437 // 64  # the digits' training split, whole batches
    assert (f"optimizer auto: adamw (lr {BASE_LR['adamw'] / 2:.3g}, weight decay {DEFAULT_WEIGHT_DECAY['adamw']:g}) "
            f"for {steps} steps; auto means adamw up to {AUTO_SGD_FROM_STEPS} steps, sgd beyond") in out
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["train_config"]["optimizer"] == "adamw" and state["train_config"]["lr"] == BASE_LR["adamw"] / 2
    assert "betas" in state["optimizer"]["param_groups"][0]  # an AdamW state
    assert state["args"]["optimizer"] == "auto"  # what --resume settles again, to the same choice


def _grey_folder(root):
    return make_image_folder(root, per_class=10, modes=("L",))


def test_broken_files_are_left_out_and_the_rest_trains_as_without_them(tmp_path):
    clean = _grey_folder(tmp_path / "clean")
    broken = _grey_folder(tmp_path / "broken")
    victim = sorted((broken / "train").iterdir())[0]
    (victim / "0a_truncated.png").write_bytes(next(victim.iterdir()).read_bytes()[:40])
    (victim / "0b_text.png").write_text("not an image")
    (sorted((broken / "train").iterdir())[-1] / "zz_empty.jpg").write_bytes(b"")
    (sorted((broken / "val").iterdir())[0] / "0_empty.png").write_bytes(b"")
    runs = {}
    for name, root in (("clean", clean), ("broken", broken)):
        rc, out, err = _main(["train", *TINY, "--data", root, "--epochs", "2", "--batch-size", "8", "--workers", "0",
                              "--out", tmp_path / f"run_{name}"])
        assert rc == 0, err
        runs[name] = (out + err, json.loads((tmp_path / f"run_{name}" / "metrics.json").read_text()),
                      load_file(tmp_path / f"run_{name}" / "last.safetensors"))
    (_, clean_metrics, clean_weights), (said, broken_metrics, broken_weights) = runs["clean"], runs["broken"]
    assert clean_weights.keys() == broken_weights.keys()
    for k, w in clean_weights.items():  # same images in the same order with the same draws: the same weights
        torch.testing.assert_close(broken_weights[k], w, rtol=0, atol=0, msg=k)
    assert broken_metrics["top1"] == clean_metrics["top1"] and broken_metrics["loss"] == clean_metrics["loss"]
    assert (broken_metrics["skipped_images"], broken_metrics["val_skipped_images"]) == (3, 1)
    assert clean_metrics["skipped_images"] == clean_metrics["val_skipped_images"] == 0
    assert said.count("warning: skipped ") == 4 and f"{victim / '0b_text.png'}: not a readable image" in said


def test_an_odd_but_readable_file_is_converted_not_a_reason_to_change_the_model(tmp_path):
    root = _grey_folder(tmp_path / "set")
    cls = sorted((root / "train").iterdir())[0]
    grey = Image.open(next(cls.iterdir()))
    grey.convert("RGBA").save(cls / "x_rgba.png")
    grey.convert("P").save(cls / "x_palette.png")
    grey.resize((9, 9)).save(cls / "x_9px.png")
    source = load_source(str(root))
    assert source.grey and not source.unreadable["train"]  # grey content in RGBA/palette files is grey
    data = build_classify_data(str(root), img_size=16)
    assert data.in_chans == 1 and len(data.train) == 23
    x, _, skipped = data.train[[p for p, _ in data.train.source.samples].index(str(cls / "x_9px.png"))]
    assert x.shape == (1, 16, 16) and not skipped


def test_grey_by_content():
    grey = Image.new("L", (4, 4), 90)
    assert holds_grey(grey) and holds_grey(grey.convert("RGB")) and holds_grey(grey.convert("RGBA"))
    colour = Image.new("RGB", (4, 4), (90, 90, 90))
    colour.putpixel((1, 2), (90, 91, 90))
    assert not holds_grey(colour)


def test_a_large_folder_is_surveyed_and_its_broken_files_skipped_as_the_loader_meets_them(tmp_path, monkeypatch):
    root = _grey_folder(tmp_path / "set")
    bad = sorted((root / "train").iterdir())[0] / "0_empty.png"
    bad.write_bytes(b"")
    monkeypatch.setattr("cspnet.data.sources.SCAN_LIMIT", 10)  # "large": more files than this
    data = build_classify_data(str(root), img_size=16)
    assert not data.unreadable["train"] and len(data.train) == 21
    _, _, skipped = data.train[[p for p, _ in data.train.source.samples].index(str(bad))]
    assert skipped == [f"{bad}: not a readable image (cannot identify image file '{bad}'); replace or delete the file"]


@pytest.mark.parametrize("value", ["0", "bogus"])
def test_an_unknown_optimizer_is_one_line_listing_auto(value):
    rc, _, err = _main(["train", "--optimizer", value])
    assert rc == 2 and "--optimizer" in err and "'auto'" in err and len(err.strip().splitlines()) == 1
