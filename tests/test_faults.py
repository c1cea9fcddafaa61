"""Faults of issue 17 that must stay fixed: runs started together on one directory, paths that are
not UTF-8, absurd option values, one input-size rule, checkpoints read while they are replaced, and
the smaller ones (resume with changed options, stale temporary files, failed runs' leftovers, ...)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from cspnet.cli import main
from test_data_sources import make_image_folder, write_image

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--model", "resnet_tiny", "--img-size", "16", "--threads", "1", "--quiet"]
RULE = "must be at least 16 and at most 4096 (input sizes are 16 to 4096 px for every command"


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    """A finished one-epoch digits run."""
    run = tmp_path_factory.mktemp("faults") / "run"
    rc, _, err = _main(["train", *TINY, "--epochs", "1", "--out", run])
    assert rc == 0, err
    return run


# --- 1. one run per directory -------------------------------------------------------------------


@contextlib.contextmanager
def _held(path: Path):
    """The directory held as a running ``cspnet train`` holds it (an exclusive flock on it)."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_a_second_run_on_a_held_directory_is_refused_at_its_start(tmp_path):
    out = tmp_path / "exp"
    with _held(out):
        rc, stdout, err = _main(["train", *TINY, "--epochs", "1", "--out", out])
    assert rc == 2 and stdout == "", stdout
    assert _one_line(err).endswith(f"{out}: another cspnet train is running in this directory; wait for it to end "
                                   "or pick another --out")
    assert list(out.iterdir()) == []  # the refused run wrote nothing
    with _held(out):
        rc, _, err = _main(["train", "--resume", "--out", out, "--quiet"])
    assert rc == 2 and "another cspnet train is running" in _one_line(err)


def test_the_claim_is_exclusive_and_a_killed_holder_releases_it(tmp_path):
    from cspnet.engine.rundir import RunDirBusy, claim_run_dir

    out = tmp_path / "exp"
    claim = claim_run_dir(out)
    with pytest.raises(RunDirBusy, match="another cspnet train is running"):
        claim_run_dir(out)
    claim.release()
    claim_run_dir(out).release()
    with pytest.raises(FileExistsError):  # numbered run directories are created exclusively
        claim_run_dir(out, exclusive_create=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cspnet.engine.rundir import claim_run_dir; "
         f"c = claim_run_dir({str(out)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(SRC)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy):
            claim_run_dir(out)
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait(timeout=30)
        claim_run_dir(out).release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# --- 2. paths that are not UTF-8 ------------------------------------------------------------------


def test_paths_that_are_not_utf8_train_resume_and_keep_their_results(tmp_path):
    base = os.fsencode(tmp_path)
    data = Path(os.fsdecode(base + b"/d\xffata"))
    out = Path(os.fsdecode(base + b"/r\xfeun"))
    make_image_folder(data, per_class=4)
    rc, stdout, err = _main(["train", *TINY, "--data", data, "--epochs", "1", "--batch-size", "4",
                             "--workers", "0", "--out", out])
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_bytes())
    assert metrics["data"] == str(data) and metrics["epoch"] == 1
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "d\\xffata" in stdout and "r\\xfeun" in stdout  # shown escaped, never as a lone surrogate
    (out / "metrics.json").unlink()
    rc, stdout, err = _main(["train", "--resume", "--out", out, "--quiet", "--threads", "1"])
    assert rc == 0 and (out / "metrics.json").is_file(), err
    assert stdout.strip().splitlines()[-1].startswith("val top-1")


def test_a_failing_plot_only_warns_and_metrics_are_written_first(tmp_path, monkeypatch):
    from cspnet.engine import trainer

    def broken(*args, **kwargs):
        assert (tmp_path / "run" / "metrics.json").is_file()  # already there when the plot starts
        raise TypeError("set_text(): incompatible function arguments. The following ...")

    monkeypatch.setattr(trainer, "plot_curves", broken)
    rc, stdout, err = _main(["train", *TINY, "--epochs", "1", "--out", tmp_path / "run"])
    assert rc == 0, err
    assert "warning: results.png not written (set_text(): incompatible function arguments." in stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epoch"] == 1


# --- 3. absurd option values ----------------------------------------------------------------------


@pytest.mark.parametrize("option, value, says", [
    ("--lr", "1e300", "must lie in (0, 10]"),
    ("--lr", "inf", "must lie in (0, 10]"),
    ("--lr", "1e10", "must lie in (0, 10]"),
    ("--lr", "nan", "must lie in (0, 10]"),
    ("--momentum", "1e300", "must lie in [0, 1)"),
    ("--momentum", "10", "must lie in [0, 1)"),
    ("--weight-decay", "1e308", "must lie in [0, 1)"),
    ("--hflip", "5", "must lie in [0, 1]: a probability"),
    ("--seed", "99999999999999999999", "must be at least 0 and at most 4294967295"),
    ("--batch-size", "1", "must be at least 2 and at most 65536: BatchNorm needs at least 2 images"),
    ("--warmup-epochs", "inf", "must lie in [0, 1e+06]"),
    ("--clip-grad", "1e309", "must lie in [0, 1e+06]"),
    ("--label-smoothing", "1", "must lie in [0, 1)"),
    ("--epochs", "99999999999999999999", "must be at least 1 and at most 1000000"),
])
def test_absurd_values_are_refused_up_front_naming_the_option_and_range(option, value, says, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = _main(["train", *TINY, "--epochs", "1", option, value])
    assert rc == 2 and stdout == ""
    assert _one_line(err).startswith(f"cspnet train: error: argument {option}: {value!r} {says}"), err
    assert not (tmp_path / "runs").exists()


def test_a_batch_of_one_per_process_is_refused_by_the_engine():
    from cspnet import create_model
    from cspnet.data import build_classify_data, collate
    from cspnet.engine import ClassificationTask, TrainConfig, Trainer
    from cspnet.engine.distributed import DistInfo

    data = build_classify_data("builtin", img_size=16)
    dist = DistInfo(rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size=2 leaves 1 image per process; BatchNorm needs at least 2: "
                                         r"use at least 4"):
        Trainer(create_model("resnet_tiny", num_classes=10, in_chans=1), ClassificationTask(10), data.train,
                data.val, collate, TrainConfig(epochs=1, batch_size=2, progress=False), dist=dist)


# --- 4. one input-size rule -----------------------------------------------------------------------


def test_every_command_shares_one_img_size_rule(run1, tmp_path):
    image = write_image(tmp_path / "a.png")
    commands = {
        "train": ["train", "--epochs", "1", "--out", tmp_path / "t"],
        "val": ["val", "--checkpoint", run1],
        "predict": ["predict", "--checkpoint", run1, image],
        "info": ["info", "cspresnext_tiny"],
        "export": ["export", "resnet_tiny", "-o", tmp_path / "m.onnx"],
        "bench": ["bench", "resnet_tiny", "--no-memory"],
        "anchors": ["anchors"],
    }
    for verb, argv in commands.items():
        for size in ("1", "7", "15", "4097"):
            rc, _, err = _main([*argv, "--img-size", size])
            assert rc == 2 and f"argument --img-size: '{size}' {RULE}" in _one_line(err), (verb, err)
        _, help_text, _ = _main([verb, "--help"])
        assert "16 to 4096 px, the rule of every command" in " ".join(help_text.split()), verb
    rc, stdout, err = _main(["info", "cspresnext_tiny", "--img-size", "16"])  # a stride-32 model at 16 px
    assert rc == 0 and "input        3x16x16" in stdout, err
    rc, stdout, err = _main(["val", "--checkpoint", run1, "--img-size", "16", "--out", tmp_path / "v"])
    assert rc == 0, err


def test_a_classifier_exports_at_the_size_it_trained_at(run1, tmp_path):
    out = tmp_path / "m.onnx"
    rc, stdout, err = _main(["export", run1 / "best.safetensors", "-o", out, "--img-size", "16"])
    assert rc == 0, err
    assert "input (1, 1, 16, 16)" in stdout and out.is_file()


# --- 5. checkpoints read while they are replaced -------------------------------------------------


WRITER = """
import sys, torch, cspnet
from pathlib import Path
from cspnet.checkpoint import save_checkpoint
path, stop = Path(sys.argv[1]), Path(sys.argv[2])
model = cspnet.create_model("resnet_tiny", num_classes=3)
v = 0
while not stop.exists():
    v += 1
    with torch.no_grad():
        model.head.fc.bias.fill_(v)
    save_checkpoint(model, path, {"epoch": v})
    if v == 1:
        print("writing", flush=True)
"""


def test_weights_and_metadata_come_from_one_version_of_a_file_being_replaced(tmp_path):
    """A writer process replaces the file as fast as it can (the library's atomic write); every load
    pairs one version's metadata with the same version's weights (epoch == the bias value)."""
    from cspnet.checkpoint import read_checkpoint
    from cspnet.commands.loading import load_checkpoint_model

    path, stop = tmp_path / "best.safetensors", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(SRC)))
    try:
        assert writer.stdout.readline().strip() == "writing"
        pairs = []
        for i in range(150):
            model, meta, _ = load_checkpoint_model(types.SimpleNamespace(checkpoint=str(path), model=None))
            pairs.append((meta["epoch"], int(model.head.fc.bias[0])))
            if i % 3 == 0:
                ckpt = read_checkpoint(path)
                pairs.append((ckpt.meta["epoch"], int(ckpt.state["head.fc.bias"][0])))
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert len({e for e, _ in pairs}) > 10  # the file really changed under the reads
    mixed = [(e, b) for e, b in pairs if e != b]
    assert not mixed, f"{len(mixed)} of {len(pairs)} loads mixed two versions, e.g. {mixed[:3]}"


# --- 6. the smaller ones --------------------------------------------------------------------------


def test_resume_refuses_changed_schedule_options(run1):
    rc, _, err = _main(["train", "--resume", "--out", run1, "--epochs", "3", "--lr", "0.5", "--quiet"])
    assert rc == 2
    line = _one_line(err)
    assert f"--resume continues {run1} with its own options, and --epochs 3 (the run's: 1), --lr 0.5 (the run's: " \
           in line and "would change them; drop them" in line
    before = (run1 / "last.state.pt").read_bytes()
    rc, _, err = _main(["train", "--resume", "--out", run1, "--epochs", "1", "--quiet"])  # the run's own: fine
    assert rc == 0 and (run1 / "last.state.pt").read_bytes() == before, err


def test_a_malicious_state_file_is_refused_without_torchs_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    run.mkdir()
    for i, blob in enumerate((pickle.dumps({"format": "cspnet-train/1", "x": Payload()}, protocol=2),
                              _torch_saved({"format": "cspnet-train/1", "x": Payload()}))):
        (run / "last.state.pt").write_bytes(blob)
        rc, _, err = _main(["train", "--resume", "--out", run])
        line = _one_line(err)
        assert rc == 2 and "last.state.pt: not a readable training state (refused to unpickle" in line, i
        assert "weights_only" not in line and "Re-running" not in line and "allowlist" not in line
    assert not (tmp_path / "pwned").exists()


def _torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_stale_temporary_files_of_a_killed_run_are_removed(run1, tmp_path):
    stale = run1 / ".last.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"half a file")
    rc, _, err = _main(["train", "--resume", "--out", run1, "--quiet"])
    assert rc == 0 and not stale.exists(), err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".best.safetensors.x.tmp").write_bytes(b"")
    rc, _, err = _main(["train", *TINY, "--epochs", "1", "--out", fresh])
    assert rc == 0 and not list(fresh.glob(".*.tmp")), err


def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(tmp_path, monkeypatch):
    from cspnet.engine import trainer

    def fail(self, epoch):
        raise ValueError("the data went away")

    monkeypatch.setattr(trainer.Trainer, "train_one_epoch", fail)
    out = tmp_path / "runs" / "exp"
    rc, _, err = _main(["train", *TINY, "--epochs", "1", "--out", out])
    assert rc == 2 and "the data went away" in _one_line(err)
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()  # a directory the user made stays, empty
    rc, _, _ = _main(["train", *TINY, "--epochs", "1", "--out", mine])
    assert rc == 2 and mine.is_dir() and list(mine.iterdir()) == []


def test_val_needs_only_a_val_folder(run1, tmp_path):
    folder = tmp_path / "digits"
    for c in range(10):
        write_image(folder / "val" / str(c) / "0.png", "L", (8, 8), seed=c)
    rc, stdout, err = _main(["val", "--checkpoint", run1, "--data", folder, "--out", tmp_path / "v"])
    assert rc == 0, err
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["images"] == 10


def test_predict_skips_a_corrupt_file_in_a_directory(run1, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.png", "L", (8, 8))
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_image(photos / "c.png", "L", (8, 8), seed=1)
    rc, stdout, err = _main(["predict", "--checkpoint", run1, photos])
    assert rc == 0, err
    assert f"warning: skipped {photos / 'b.png'}: not a readable image" in err
    named = [ln for ln in stdout.splitlines() if not ln.startswith(" ")]
    assert named == [str(photos / "a.png"), str(photos / "c.png")]


def test_val_out_under_a_file_fails_before_evaluating(run1, tmp_path, monkeypatch):
    import cspnet.engine

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(cspnet.engine, "evaluate", never)
    (tmp_path / "file").write_text("x")
    rc, _, err = _main(["val", "--checkpoint", run1, "--out", tmp_path / "file" / "v"])
    assert rc == 2
    assert _one_line(err).endswith(f"--out {tmp_path / 'file' / 'v'}: {tmp_path / 'file'} is a file, not a directory")


def test_export_says_a_file_is_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = _main(["export", "resnet_tiny", "-o", tmp_path / "file" / "m.onnx"])
    assert rc == 2
    assert _one_line(err).endswith(f"--output {tmp_path / 'file' / 'm.onnx'}: {tmp_path / 'file'} is a file, "
                                   "not a directory")


def test_an_empty_data_spec_is_refused(run1, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _main(["train", *TINY, "--epochs", "1", "--data", ""])
    assert rc == 2 and "--data is empty; give a data spec" in _one_line(err)
    assert not (tmp_path / "runs").exists()
    rc, _, err = _main(["val", "--checkpoint", run1, "--data", " "])
    assert rc == 2 and "--data is empty" in _one_line(err)


def test_skipped_images_counts_files_not_epochs(tmp_path):
    """Two unreadable training files met in each of 2 epochs are 2 skipped images, not 4."""
    from cspnet import create_model
    from cspnet.data import collate
    from cspnet.engine import ClassificationTask, TrainConfig, Trainer

    class Images(torch.utils.data.Dataset):
        """8 images, 2 of them unreadable: replaced by a readable one and named, as training does."""

        def __len__(self):
            return 8

        def __getitem__(self, i):
            skipped = [f"bad{i}.png: not a readable image"] if i in (2, 5) else []
            return torch.full((1, 16, 16), (i + 1) / 8.0), i % 2, skipped

    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=2, in_chans=1)
    trainer = Trainer(model, ClassificationTask(2), Images(), Images(), collate,
                      TrainConfig(epochs=2, batch_size=8, progress=False), run_dir=tmp_path / "run",
                      log=lambda msg: None)
    final = trainer.fit()
    assert [r["skipped"] for r in trainer.history] == [2, 2]
    assert final["skipped_images"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_images"] == 2


def test_a_json_file_as_checkpoint_names_its_type(run1, tmp_path):
    rc, _, err = _main(["val", "--checkpoint", run1 / "best.json"])
    assert rc == 2 and _one_line(err).endswith(
        f"{run1 / 'best.json'}: a JSON file (a checkpoint's readable metadata), not weights; the weights are "
        f"{run1 / 'best.safetensors'}")
    disguised = tmp_path / "weights.pt"
    disguised.write_text('{"model": "resnet_tiny"}')
    rc, _, err = _main(["val", "--checkpoint", disguised])
    assert rc == 2 and _one_line(err).endswith(f"{disguised}: a JSON file, not a weights-only torch file")
