"""The engine: schedule, EMA, loss, exact resume, checkpoints that rebuild the evaluated model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from cspnet import create_model
from cspnet.checkpoint import read_metadata
from cspnet.cli import cli_message
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
)
from cspnet.engine import trainer as trainer_module
from cspnet.engine.distributed import DistInfo
from cspnet.engine.runtime import autocast, seed_everything


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


def _trainer(digits, run_dir=None, epochs=3, log=lambda msg: None, dist=None, **cfg):
    train, val, data = digits
    seed_everything(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1)
    cfg = TrainConfig(epochs=epochs, batch_size=32, progress=False, **cfg)
    extra = {"classes": data.classes, "preprocess": data.preprocess, "data": "builtin"}
    return Trainer(model, ClassificationTask(10, 0.1), train, val, collate, cfg, dist=dist, run_dir=run_dir,
                   extra=extra, log=log)


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
    meta = read_metadata(tmp_path / "last.safetensors")
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


@pytest.mark.parametrize("clip, advice, flags", [
    (0.0, "lower lr or set clip_grad", "lower --lr or set --clip-grad"),
    (1.0, "lower lr (gradients are already clipped at clip_grad=1.0)",
     "lower --lr (gradients are already clipped at --clip-grad 1)"),
])
def test_diverging_loss_is_one_clear_error(digits16, clip, advice, flags):
    """The library names its arguments; the command line shows the same advice with its flags."""
    trainer = _trainer(digits16, epochs=1, lr=1e30, warmup_epochs=0, clip_grad=clip)
    with pytest.raises(ValueError, match=r"the loss became (nan|inf) at epoch 1, step \d") as err:
        for epoch in range(3):
            trainer.train_one_epoch(epoch)
    assert str(err.value).endswith(advice)
    assert cli_message(err.value).endswith(flags) and cli_message(err.value).startswith("the loss became")


def test_bf16_gradients_match_fp32(digits16):
    """torch 2.14's oneDNN bf16 weight gradient is garbage (1e17..inf) for a conv whose stride exceeds
    its input (resnet_tiny at 16 px: the last stage's 3x3 stride-2 conv on a 1x1 map); the trainer
    keeps such convs in fp32, so the bf16 gradient norm stays within bf16 rounding of fp32's."""
    trainer = _trainer(digits16, epochs=1, amp="bf16")
    model = trainer.model
    for _, batch in zip(range(4), trainer.train_loader, strict=False):  # the garbage varies from call to call
        norms = []
        for dtype in (trainer.amp_dtype, None):
            model.zero_grad()
            with autocast(trainer.device, dtype):
                loss = trainer.task.loss(model, batch["inputs"], batch["targets"])
            loss.backward()
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        assert 0.8 < norms[0] / norms[1] < 1.25, norms


def _poison(trainer, steps: set[int]):
    """Make the gradient of the classifier weight infinite on the given (1-based) steps."""
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return grad * math.inf if calls[0] in steps else grad

    trainer.model.head.fc.weight.register_hook(hook)


@pytest.mark.parametrize("scaler", [False, True])
def test_non_finite_gradient_skips_the_step(digits16, scaler):
    """Without and with fp16's loss scaler (which works on the CPU too, with fp32 here)."""
    logs = []
    trainer = _trainer(digits16, epochs=1, clip_grad=1.0, log=logs.append, optimizer="sgd")  # momentum below
    if scaler:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _poison(trainer, {2, 3})
    loader = iter(trainer.train_loader)
    trainer.train_step(*(lambda b: (b["inputs"], b["targets"]))(next(loader)))
    params = {k: v.clone() for k, v in trainer.model.named_parameters()}
    momentum = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()]
    for _ in range(2):
        batch = next(loader)
        assert math.isfinite(trainer.train_step(batch["inputs"], batch["targets"]).item())
    for k, v in trainer.model.named_parameters():  # no update at all
        assert torch.equal(v, params[k]), k
    after = [trainer.optimizer.state[p]["momentum_buffer"] for p in trainer.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, after, strict=True))
    assert trainer.scheduler.last_epoch == 3 and trainer.skipped_steps == 2  # the schedule moves on
    if scaler:
        assert trainer.scaler.get_scale() == 256.0  # halved after each overflow
    assert len(logs) == 1 and logs[0].startswith("warning: the gradient norm was not finite at epoch 1, step 2")
    batch = next(loader)
    trainer.train_step(batch["inputs"], batch["targets"])
    assert not torch.equal(trainer.model.head.fc.weight, params["head.fc.weight"])


def test_skipped_steps_are_counted_and_too_many_end_the_run(digits16, tmp_path, monkeypatch):
    trainer = _trainer(digits16, tmp_path, epochs=1)
    _poison(trainer, {3})
    final = trainer.fit()
    assert final["skipped_steps"] == 1
    assert "skipped_steps" in (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    monkeypatch.setattr(trainer_module, "MAX_CONSECUTIVE_BAD_STEPS", 3)
    trainer = _trainer(digits16, epochs=1, amp="bf16")
    _poison(trainer, set(range(1, 100)))
    with pytest.raises(ValueError) as err:
        trainer.train_one_epoch(0)
    assert str(err.value) == ("the gradient norm was not finite for 3 steps in a row (up to epoch 1, step 3); "
                              "lower lr, set clip_grad or train without amp")
    assert cli_message(err.value) == ("the gradient norm was not finite for 3 steps in a row (up to epoch 1, "
                                      "step 3); lower --lr, set --clip-grad or train without --amp")


def test_sync_bn_needs_cuda_under_ddp(digits16):
    message = "^sync_bn=True needs CUDA devices: torch's SyncBatchNorm has no CPU kernels"
    with pytest.raises(ValueError, match=message) as e:
        _trainer(digits16, sync_bn=True, dist=DistInfo(rank=0, world_size=2))
    assert cli_message(e.value).startswith("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU kernels")
    one = _trainer(digits16, sync_bn=True)  # one process: nothing to synchronise, plain BatchNorm
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in one.model.modules())


def test_tensorboard_event_file(digits16, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra: pip install -e .[dev]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _trainer(digits16, tmp_path, epochs=2).fit()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {
        "train_loss", "lr", "train_images_per_s", "skipped", "skipped_steps", "val_loss", "val_top1",
        "val_top5", "val_images", "val_images_per_s", "val_skipped", "epoch_s",
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e.step for e in acc.Scalars("val_top1")] == [1, 2]
    assert acc.Scalars("val_top1")[-1].value == pytest.approx(metrics["top1"], rel=1e-6)
    assert acc.Scalars("val_images")[-1].value == 64


def test_no_tensorboard_no_event_file(digits16, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    _trainer(digits16, tmp_path, epochs=1).fit()
    assert list(tmp_path.glob("events.out.tfevents.*")) == [] and (tmp_path / "metrics.json").is_file()
