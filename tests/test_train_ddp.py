"""DistributedDataParallel on the CPU (gloo), launched the way users launch it: torchrun.

Run as a script (``python -m torch.distributed.run --nproc_per_node=2 tests/test_train_ddp.py OUT``)
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


def test_ranks_keep_identical_weights(tmp_path):
    _run([*TORCHRUN, str(Path(__file__).resolve()), str(tmp_path)], tmp_path)
    from cspnet.tools.checkpoint import load_state_dict_file

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


def _worker(out: Path) -> None:
    from torch.utils.data import Subset

    from cspnet import create_model
    from cspnet.data import build_classify_data, collate
    from cspnet.engine import ClassificationTask, TrainConfig, Trainer, init_distributed, shutdown
    from cspnet.engine.runtime import seed_everything
    from cspnet.tools.checkpoint import save_state_dict

    dist = init_distributed("cpu")
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
    _worker(Path(sys.argv[1]))
elif not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
