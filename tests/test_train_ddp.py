"""DistributedDataParallel on the CPU (gloo), launched the way users launch it: torchrun.

Run as a script (``python -m torch.distributed.run --nproc_per_node=2 tests/test_train_ddp.py OUT DEVICE``)
this file is the worker: every rank trains a few steps and writes its weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def cpu_ranks(tmp_path_factory):
    """One torchrun launch (they take seconds) for the tests that read the ranks' weights."""
    out = tmp_path_factory.mktemp("ddp")
    _run([*TORCHRUN, str(Path(__file__).resolve()), str(out), "cpu"], out)
    return out


def test_ranks_keep_identical_weights(cpu_ranks):
    tmp_path = cpu_ranks
    from cspnet.checkpoint import load_state_dict_file

    ranks = [load_state_dict_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    emas = [load_state_dict_file(tmp_path / f"ema{r}.safetensors") for r in range(2)]
    inits = [load_state_dict_file(tmp_path / f"init{r}.safetensors") for r in range(2)]
    # the ranks started from different random weights on purpose: DDP must broadcast rank 0's
    assert not torch.equal(inits[0]["stem.conv.conv.weight"], inits[1]["stem.conv.conv.weight"])
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # parameters and BatchNorm statistics, raw and averaged
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert torch.equal(emas[0][key], emas[1][key]), key
    moved = [k for k in ranks[0] if ranks[0][k].is_floating_point() and not torch.equal(ranks[0][k], inits[0][k])]
    assert "stem.conv.conv.weight" in moved and "head.fc.weight" in moved
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps == {"world_size": 2, "steps_per_epoch": 4, "epochs": 2}


def test_torchrun_cli(tmp_path):
    """``torchrun -m cspnet train``: one run directory written by rank 0, DDP over 2 processes."""
    out = tmp_path / "run"
    proc = _run([*TORCHRUN, "-m", "cspnet", "train", "--model", "resnet_tiny", "--epochs", "1",
                 "--img-size", "16", "--batch-size", "64", "--out", str(out), "--quiet"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epoch"] == 1
    assert proc.stdout.count("val top-1") == 1  # rank 0 alone prints
    assert proc.stdout.strip().splitlines()[-1].startswith(f"val top-1 {metrics['top1']:.2f}%  top-5")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("best")) == ["best.json", "best.safetensors"]


def test_torchrun_detection(tmp_path):
    """``torchrun -m cspnet train --task detect``: the detection task on the same DDP path; the mAP is
    scored once over both ranks' predictions (every validation image counted once)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from detect_data import rectangles_set

    data = rectangles_set(tmp_path / "data", n_train=8, n_val=5)
    out = tmp_path / "run"
    proc = _run([*TORCHRUN, "-m", "cspnet", "train", "--task", "detect", "--data", str(data), "--epochs", "1",
                 "--img-size", "64", "--batch-size", "4", "--out", str(out), "--quiet", "--workers", "0"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epoch"] == 1
    assert proc.stdout.count("val mAP@0.5:0.95") == 1 and proc.stderr.count("anchors: ") == 1  # rank 0 alone
    assert proc.stdout.strip().splitlines()[-1].startswith(f"val mAP@0.5:0.95 {metrics['map']:.4f}")
    predictions = json.loads((out / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == set(range(1, 6))  # both ranks' shares, gathered


def _plain_net() -> nn.Module:
    """No BatchNorm: with per-rank statistics (torch has no CPU SyncBatchNorm) nothing else differs
    between one process and N."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _same_batches(dist, sync_bn: bool) -> dict:
    """A short run without random augmentation: its final weights depend only on the global batches."""
    from torch.utils.data import Subset

    from cspnet import create_model
    from cspnet.data import build_classify_data, collate
    from cspnet.engine import ClassificationTask, TrainConfig, Trainer
    from cspnet.engine.runtime import seed_everything

    data = build_classify_data("builtin", img_size=16, crop=False)  # the digits are never flipped
    seed_everything(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1) if sync_bn else _plain_net()
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, clip_grad=5.0, sync_bn=sync_bn,
                      deterministic=dist.device.type == "cuda")  # no autotuned cuDNN algorithms
    trainer = Trainer(model, ClassificationTask(10, 0.1), Subset(data.train, range(128)),
                      Subset(data.val, range(40)), collate, cfg, dist, log=lambda msg: None)
    trainer.fit()
    return {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}


def _assert_same_weights(one: dict, ranks: dict) -> None:
    assert one.keys() == ranks.keys()
    for key, v in one.items():
        torch.testing.assert_close(ranks[key], v, rtol=0, atol=1e-5, msg=key)
    assert max((one[k].float() - ranks[k].float()).abs().max().item() for k in one) > 0  # two real runs


def test_two_ranks_train_like_one_process(cpu_ranks):
    """DistributedSampler's split gives rank r the r-th of every 2 indices of one shuffle, which the
    single process draws too: 2 x 16 images per step are the same 32 as the single process's."""
    from cspnet.checkpoint import load_state_dict_file
    from cspnet.engine import DistInfo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _same_batches(DistInfo(), sync_bn=False)
    finally:
        torch.set_num_threads(threads)
    _assert_same_weights(one, load_state_dict_file(cpu_ranks / "same0.safetensors"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA (torch has no CPU kernels)")
def test_sync_bn_ranks_train_like_one_process(tmp_path):
    """With --sync-bn, BatchNorm models too: 2 ranks (gloo, sharing GPU 0) equal one process."""
    from cspnet.checkpoint import load_state_dict_file
    from cspnet.engine import DistInfo
    from cspnet.engine.runtime import set_deterministic

    _run([*TORCHRUN, str(Path(__file__).resolve()), str(tmp_path), "cuda"], tmp_path)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        one = _same_batches(DistInfo(device=torch.device("cuda", 0)), sync_bn=True)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        set_deterministic(False)
    _assert_same_weights(one, load_state_dict_file(tmp_path / "same0.safetensors"))


def _worker(out: Path, device: str) -> None:
    from torch.utils.data import Subset

    from cspnet import create_model
    from cspnet.checkpoint import save_state_dict
    from cspnet.data import build_classify_data, collate
    from cspnet.engine import ClassificationTask, TrainConfig, Trainer, init_distributed, shutdown
    from cspnet.engine.runtime import seed_everything

    if device == "cuda":  # both ranks on GPU 0, which nccl refuses and gloo allows
        torch.backends.cudnn.allow_tf32 = False
        torch.distributed.init_process_group("gloo")
        dist = init_distributed("cuda:0")
        save_state_dict(_same_batches(dist, sync_bn=True), out / f"same{dist.rank}.safetensors")
        shutdown(dist)
        return
    dist = init_distributed("cpu")
    save_state_dict(_same_batches(dist, sync_bn=False), out / f"same{dist.rank}.safetensors")
    seed_everything(100 + dist.rank)  # different initial weights per rank
    model = create_model("resnet_tiny", num_classes=10, in_chans=1)
    save_state_dict(model.state_dict(), out / f"init{dist.rank}.safetensors")
    data = build_classify_data("builtin", img_size=16)
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, ema=True, ema_decay=0.9, clip_grad=5.0)
    trainer = Trainer(model, ClassificationTask(10, 0.1), Subset(data.train, range(128)),
                      Subset(data.val, range(40)), collate, cfg, dist, log=lambda msg: None)
    trainer.fit()
    save_state_dict(model.state_dict(), out / f"rank{dist.rank}.safetensors")
    save_state_dict(trainer.ema.module.state_dict(), out / f"ema{dist.rank}.safetensors")
    if dist.is_main:
        (out / "steps.json").write_text(json.dumps(
            {"world_size": dist.world_size, "steps_per_epoch": trainer.steps_per_epoch, "epochs": trainer.epoch}))
    shutdown(dist)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
elif not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
