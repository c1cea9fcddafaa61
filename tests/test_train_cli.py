"""``cspnet train / val / predict`` end to end, and one clear line for every kind of bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cspnet.cli import main
from test_data_sources import make_image_folder, write_image

TINY = ["--model", "resnet_tiny", "--img-size", "16", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "digits"
    n = torch.get_num_threads()
    rc, out, err = _main(["train", *TINY, "--epochs", "2", "--batch-size", "64", "--out", run])
    torch.set_num_threads(n)
    assert rc == 0, err
    return run, out


@pytest.fixture(scope="module")
def pets_run(tmp_path_factory):
    """A 3-channel model on a colour ImageFolder with a truncated training image and an empty
    validation image."""
    root = make_image_folder(tmp_path_factory.mktemp("pets") / "pets", per_class=6, modes=("RGB", "P"))
    bad = root / "train" / "dog" / "2.png"
    bad.write_bytes(bad.read_bytes()[:50])
    (root / "val" / "cat" / "1.png").write_bytes(b"")
    run = root.parent / "run"
    n = torch.get_num_threads()
    rc, out, err = _main(["train", *TINY, "--data", root, "--epochs", "1", "--batch-size", "4",
                          "--workers", "0", "--out", run])
    torch.set_num_threads(n)
    assert rc == 0, err
    return root, run, out


def test_train_writes_the_run_directory(digits_run):
    run, out = digits_run
    names = {p.name for p in run.iterdir()}
    assert {"best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.pt",
            "results.csv", "results.png", "metrics.json"} <= names
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["model"] == "resnet_tiny" and metrics["data"] == "builtin"
    assert 0 <= metrics["top5"] <= 100 and metrics["top1"] <= metrics["top5"] and metrics["images_per_s"] > 0
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%")
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val_top1"]) == pytest.approx(metrics["top1"], abs=1e-4)


def test_val_reproduces_the_training_figures(digits_run, tmp_path):
    run, _ = digits_run
    rc, out, err = _main(["val", "--checkpoint", run / "last.safetensors", "--out", tmp_path, "--threads", "1"])
    assert rc == 0, err
    trained = json.loads((run / "metrics.json").read_text())
    checked = json.loads((tmp_path / "metrics.json").read_text())
    assert checked["top1"] == pytest.approx(trained["top1"]) and checked["top5"] == pytest.approx(trained["top5"])
    assert checked["loss"] == pytest.approx(trained["loss"], rel=1e-5) and checked["epoch"] == 2
    assert out.strip().splitlines()[-1].startswith(f"val top-1 {checked['top1']:.2f}%  top-5")


def test_corrupt_images_are_skipped_warned_and_counted(pets_run):
    root, run, out = pets_run
    warnings = [line for line in out.splitlines() if line.startswith("warning: skipped")]
    assert warnings == [f"warning: skipped {root / 'train' / 'dog' / '2.png'}: not a readable image "
                        "(image file is truncated); replace or delete the file",
                        f"warning: skipped {root / 'val' / 'cat' / '1.png'}: not a readable image "
                        f"(cannot identify image file '{root / 'val' / 'cat' / '1.png'}'); replace or delete the file"]
    rows = list(csv.DictReader((run / "results.csv").open()))  # left out before training: never met per epoch
    assert rows[0]["skipped"] == "0" and rows[0]["val_skipped"] == "0" and rows[0]["val_images"] == "5"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["skipped_images"], metrics["val_skipped_images"], metrics["skipped_steps"]) == (1, 1, 0)


def test_val_names_the_unreadable_images(pets_run, tmp_path):
    root, run, _ = pets_run
    rc, out, err = _main(["val", "--checkpoint", run, "--data", root, "--out", tmp_path, "--threads", "1"])
    assert rc == 0
    bad = root / "val" / "cat" / "1.png"
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"warning: skipped {bad}: not a readable image (cannot identify image file '{bad}'); replace or delete the file"
    ]
    assert out.startswith("5 images of ") and json.loads((tmp_path / "metrics.json").read_text())["skipped_images"] == 1


def test_predict_any_image_mode_with_class_names(pets_run, tmp_path):
    _, run, _ = pets_run
    images = [write_image(tmp_path / "grey.png", "L", (3, 2)),  # grey and smaller than the crop
              write_image(tmp_path / "pal.png", "P"), write_image(tmp_path / "rgba.png", "RGBA")]
    rc, out, err = _main(["predict", "--checkpoint", run, *images, "--threads", "1"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 3 * 3  # two classes: top-2 per image
    probs = [float(line.split()[-1].rstrip("%")) for line in lines[1:3]]
    assert {line.split()[1] for line in lines[1:3]} == {"cat", "dog"} and sum(probs) == pytest.approx(100, abs=0.02)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "deeper.png")
    rc, by_dir, err = _main(["predict", "--checkpoint", run, tmp_path, "--threads", "1"])  # a directory: its images
    assert rc == 0, err
    names = [line for line in by_dir.splitlines() if not line.startswith(" ")]
    assert names == [str(tmp_path / n) for n in ("grey.png", "pal.png", "rgba.png")]
    assert by_dir.splitlines()[1:3] == lines[1:3]


def test_fine_tune_keeps_the_checkpoints_channels(digits_run, pets_run, tmp_path):
    run, _ = digits_run
    root, _, _ = pets_run
    rc, _, err = _main(["train", *TINY, "--data", root, "--checkpoint", run, "--epochs", "1", "--batch-size", "4",
                        "--out", tmp_path / "ft"])
    assert rc == 0, err
    from cspnet.checkpoint import read_metadata

    meta = read_metadata(tmp_path / "ft" / "last.safetensors")
    assert meta["in_chans"] == 1 and meta["classes"] == ["cat", "dog"] and meta["num_classes"] == 2


def test_baseline_through_set_option(tmp_path):
    """``--set fusion=none`` trains the plain-stage baseline, and its checkpoint rebuilds it."""
    rc, _, err = _main(["train", *TINY, "--model", "cspresnet_tiny", "--set", "fusion=none", "--epochs", "1",
                        "--batch-size", "128", "--out", tmp_path])
    assert rc == 0, err
    meta = json.loads((tmp_path / "last.json").read_text())
    assert {st["fusion"] for st in meta["config"]["stages"]} == {"none"}
    from cspnet import create_model
    from cspnet.bench.profile import count_params

    rebuilt = create_model(checkpoint=str(tmp_path / "last.safetensors"))
    baseline = create_model("cspresnet_tiny", num_classes=10, in_chans=1, fusion="none")
    assert count_params(rebuilt) == count_params(baseline)
    assert count_params(baseline) != count_params(create_model("cspresnet_tiny", num_classes=10, in_chans=1))
    rc, out, err = _main(["val", "--checkpoint", tmp_path, "--model", "cspresnet_tiny", "--out", tmp_path / "v"])
    assert rc == 0 and out.splitlines()[-1].startswith("val top-1"), err


def test_resume_finishes_a_run_killed_before_its_final_files(digits_run, tmp_path):
    """Killed after the last epoch's last.state.pt but before metrics.json and results.png."""
    run, out = digits_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "metrics.json").unlink()
    (copy / "results.png").unlink()
    state = (copy / "last.state.pt").read_bytes()
    rc, again, err = _main(["train", "--resume", "--out", copy, "--threads", "1", "--quiet"])
    assert rc == 0, err
    assert "finishing (all 2 epochs done" in again and "epoch 1/2" not in again  # nothing retrained
    assert again.strip().splitlines()[-1] == out.strip().splitlines()[-1].replace(str(run), str(copy))
    metrics, original = (json.loads((d / "metrics.json").read_text()) for d in (copy, run))
    for key in ("top1", "top5", "loss", "epoch", "best_top1", "best_epoch", "wall_s", "images_per_s"):
        assert metrics[key] == original[key], key
    assert (copy / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (copy / "last.state.pt").read_bytes() == state


def test_resume_of_a_finished_run_and_reused_out(digits_run):
    run, _ = digits_run
    rc, out, err = _main(["train", "--resume", "--out", run, "--threads", "1", "--quiet"])
    assert rc == 0 and out.strip().splitlines()[-1].startswith("val top-1"), err
    rc, _, err = _main(["train", *TINY, "--out", run])
    assert rc == 2 and "already holds a run; add --resume" in err
    rc, _, err = _main(["train", "--resume", "--out", run, "--model", "cspresnet_tiny"])
    assert rc == 2 and "trains model 'resnet_tiny', not 'cspresnet_tiny'" in err


def _bad_inputs(tmp: Path, run: Path, pets: Path):
    empty = make_image_folder(tmp / "empty")
    (empty / "train" / "zebra").mkdir()
    (empty / "val" / "zebra").mkdir()
    write_image(empty / "val" / "zebra" / "0.png")
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return {
        "missing directory": (["train", "--data", tmp / "nowhere"], "no such directory"),
        "empty class folder": (["train", "--data", empty], "zebra: empty class folder"),
        "unknown model": (["train", "--model", "cspresnet_tny"], "did you mean cspresnet_tiny"),
        "negative option": (["train", "--epochs", "-3"], "argument --epochs: '-3' must be at least 1"),
        "non-numeric option": (["train", "--lr", "fast"], "argument --lr: 'fast' is not a number"),
        "fp16 on cpu": (["train", "--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
        "corrupt image": (["predict", "--checkpoint", run, broken], "broken.png: not a readable image"),
        "missing image": (["predict", "--checkpoint", run, tmp / "gone.jpg"], "gone.jpg: no such image file"),
        "directory without images": (["predict", "--checkpoint", run, pets],
                                     f"{pets}: a directory with no image files (.bmp, "),
        "other model's checkpoint": (["val", "--checkpoint", run, "--model", "cspresnet_tiny"],
                                     "holds weights of model 'resnet_tiny', not 'cspresnet_tiny'"),
        "other model's weights to start from": (["train", "--model", "cspresnet_tiny", "--checkpoint", run],
                                                "holds weights of model 'resnet_tiny', not 'cspresnet_tiny'"),
        "missing checkpoint": (["val", "--checkpoint", tmp / "none.safetensors"], "no such checkpoint"),
        "unknown model option": (["train", "--set", "fuson=none"], "unknown option 'fuson' for this model"),
        "checkpoint for other data": (["val", "--checkpoint", run, "--data", pets],
                                      "the model has 10 classes, " + str(pets) + " has 2"),
    }


def test_bad_input_gives_one_clear_line(digits_run, pets_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, _ = digits_run
    for name, (argv, message) in _bad_inputs(tmp_path, run, pets_run[0]).items():
        rc, out, err = _main(argv)
        assert rc == 2, name
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert message in err, (name, err)
    assert not (tmp_path / "runs").exists()  # a refused run leaves no directory behind


def test_python_m_cspnet_exits_nonzero_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run([sys.executable, "-m", "cspnet", "train", "--data", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cspnet train: error: ") and "nowhere: no such directory" in proc.stderr
