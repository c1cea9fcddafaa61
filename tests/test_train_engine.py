"""The engine: schedule, EMA, loss, exact resume, checkpoints that rebuild the evaluated model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from cspnet import create_model
from cspnet.data import build_classify_data, collate
from cspnet.engine import (
    STATE_FILE,
    ClassificationTask,
    ModelEMA,
    TrainConfig,
    Trainer,
    WarmupCosine,
    eval_loader,
    evaluate,
    load_state,
    read_run_meta,
)
from cspnet.engine.runtime import seed_everything


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the suite runs two test processes on two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits16():
    data = build_classify_data("builtin", img_size=16)
    return Subset(data.train, range(192)), Subset(data.val, range(64)), data


def _trainer(digits, run_dir=None, epochs=3, **cfg):
    train, val, data = digits
    seed_everything(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1)
    cfg = TrainConfig(epochs=epochs, batch_size=32, progress=False, **cfg)
    extra = {"classes": data.classes, "preprocess": data.preprocess, "data": "builtin"}
    return Trainer(model, ClassificationTask(10, 0.1), train, val, collate, cfg, run_dir=run_dir, extra=extra,
                   log=lambda msg: None)


def test_warmup_cosine_values():
    f = WarmupCosine(total=110, warmup=10, warmup_start=0.0)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_ema_follows_the_formula():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: d = min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * w0 + 0.9 * (w0 + 1.0))
    assert ema.current_decay() == pytest.approx(2 / 11)


def test_classification_loss_and_metrics():
    task = ClassificationTask(3, label_smoothing=0.2)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.5]])
    target = torch.tensor([0, 2, 2])
    loss = task.loss(lambda x: x, logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target, label_smoothing=0.2))
    state = task.eval_start(torch.device("cpu"))
    task.eval_update(state, logits, target)
    from cspnet.engine import DistInfo

    m = task.eval_finish(state, DistInfo())
    assert m["top1"] == pytest.approx(200 / 3) and m["top5"] == 100.0
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, target).item())  # no smoothing in val


@pytest.mark.parametrize("ema", [False, True])
def test_resume_equals_uninterrupted(digits16, tmp_path, ema):
    straight = _trainer(digits16, tmp_path / "a", ema=ema, ema_decay=0.95)
    straight.fit()

    class Killed(Exception):
        pass

    def kill_after_first_epoch(trainer, row):
        if trainer.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        _trainer(digits16, tmp_path / "b", ema=ema, ema_decay=0.95).fit(callbacks=[kill_after_first_epoch])
    state = load_state(tmp_path / "b" / STATE_FILE)
    assert state["epoch"] == 1
    resumed = _trainer(digits16, tmp_path / "b", ema=ema, ema_decay=0.95)
    resumed.load_state_dict(state)
    resumed.fit()
    for model_a, model_b in [(straight.model, resumed.model), (straight.eval_model, resumed.eval_model)]:
        sa, sb = model_a.state_dict(), model_b.state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert [r["val_top1"] for r in straight.history] == [r["val_top1"] for r in resumed.history]
    assert (tmp_path / "b" / "results.csv").read_text().count("\n") == 4  # header + 3 epochs


def test_checkpoint_rebuilds_the_evaluated_model(digits16, tmp_path):
    trainer = _trainer(digits16, tmp_path, epochs=2, ema=True, ema_decay=0.9, channels_last=True, clip_grad=1.0)
    final = trainer.fit()
    meta = read_run_meta(tmp_path / "last.safetensors")
    assert meta["model"] == "resnet_tiny" and meta["epoch"] == 2 and meta["classes"][3] == "3"
    assert meta["preprocess"]["img_size"] == 16 and meta["in_chans"] == 1
    sidecar = json.loads((tmp_path / "last.json").read_text())
    assert sidecar["classes"] == meta["classes"] and sidecar["config"]["stem_chs"] == 16
    model = create_model(checkpoint=str(tmp_path / "last.safetensors"))  # no name needed
    loader = eval_loader(digits16[1], 16, 0, collate, trainer.dist)
    again = evaluate(model, loader, trainer.task, trainer.dist)
    assert again["top1"] == pytest.approx(final["top1"]) and again["loss"] == pytest.approx(final["loss"], rel=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"top1", "top5", "loss", "epoch", "images_per_s"} <= metrics.keys() and metrics["epoch"] == 2
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_autocast_and_adamw_train(digits16):
    trainer = _trainer(digits16, epochs=1, amp="auto", optimizer="adamw")
    assert trainer.amp_dtype is torch.bfloat16 and isinstance(trainer.optimizer, torch.optim.AdamW)
    before = trainer.model.stem.conv.conv.weight.detach().clone()
    stats = trainer.train_one_epoch(0)
    assert math.isfinite(stats["train_loss"]) and not torch.equal(before, trainer.model.stem.conv.conv.weight)
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0  # biases and norms: no decay


def test_diverging_loss_is_one_clear_error(digits16):
    trainer = _trainer(digits16, epochs=1, lr=1e30, warmup_epochs=0)
    with pytest.raises(ValueError, match="lower --lr"):
        for epoch in range(3):
            trainer.train_one_epoch(epoch)


def test_tensorboard_events_only_when_installed(digits16, tmp_path):
    _trainer(digits16, tmp_path, epochs=1).fit()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert events == []  # optional: the run works without it and writes none
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert acc.Scalars("val_top1")[-1].value == pytest.approx(metrics["top1"], rel=1e-6)
